// Strict accessors over nlohmann::json: every read names the field path in its error, so a bad
// request is answered with e.g. `INVALID_ARGUMENT: process.args[0]: must be a string`.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/util.h"

namespace agent {

using json = nlohmann::json;

// Parses a payload; rejects invalid JSON, non-objects and nesting deeper than 64 levels.
json ParseObject(std::string_view text);

[[noreturn]] void BadField(const std::string& path, const std::string& what);

// Child `key` of object `o`; nullptr when absent or null.
const json* Field(const json& o, const char* key);
// Throws unless `o` is an object whose keys are all in `allowed` (unknown fields are mistakes).
void CheckKeys(const json& o, const std::string& path, std::initializer_list<const char*> allowed);

std::string GetString(const json& o, const char* key, const std::string& path);
std::optional<std::string> OptString(const json& o, const char* key, const std::string& path);
bool OptBool(const json& o, const char* key, const std::string& path, bool fallback);
// Integers within [min, max]; JSON floats and out-of-range values are rejected.
int64_t GetInt(const json& o, const char* key, const std::string& path, int64_t min, int64_t max);
std::optional<int64_t> OptInt(const json& o, const char* key, const std::string& path, int64_t min, int64_t max);
std::optional<uint64_t> OptUint64(const json& o, const char* key, const std::string& path);
std::vector<std::string> OptStrings(const json& o, const char* key, const std::string& path, size_t maxItems = 4096);
const json& GetObject(const json& o, const char* key, const std::string& path);
const json* OptObject(const json& o, const char* key, const std::string& path);
const json* OptArray(const json& o, const char* key, const std::string& path);

// Strings going to the kernel must not contain NUL bytes.
void CheckNoNul(const std::string& s, const std::string& path);

}  // namespace agent
