#include "agent/json.h"

namespace agent {

json ParseObject(std::string_view text) {
  // nlohmann parses iteratively, but bound the depth anyway so no later recursion can blow the stack.
  int depth = 0;
  bool inString = false;
  for (size_t i = 0; i < text.size(); i++) {
    char c = text[i];
    if (inString) {
      if (c == '\\') i++;
      else if (c == '"') inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '{' || c == '[') {
      if (++depth > 64) throw Error(Code::kInvalidArgument, "JSON nesting deeper than 64 levels");
    } else if (c == '}' || c == ']') {
      depth--;
    }
  }
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error(Code::kInvalidArgument, "payload is not valid JSON");
  if (!j.is_object()) throw Error(Code::kInvalidArgument, "payload is not a JSON object");
  return j;
}

void BadField(const std::string& path, const std::string& what) {
  throw Error(Code::kInvalidArgument, path + ": " + what);
}

static std::string Join(const std::string& path, const char* key) { return path.empty() ? key : path + "." + key; }

const json* Field(const json& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return nullptr;
  return &*it;
}

void CheckKeys(const json& o, const std::string& path, std::initializer_list<const char*> allowed) {
  if (!o.is_object()) BadField(path.empty() ? "params" : path, "must be an object");
  for (auto it = o.begin(); it != o.end(); ++it) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || it.key() == a;
    if (!ok) BadField(Join(path, it.key().c_str()), "unknown field");
  }
}

void CheckNoNul(const std::string& s, const std::string& path) {
  if (s.find('\0') != std::string::npos) BadField(path, "must not contain NUL bytes");
}

std::optional<std::string> OptString(const json& o, const char* key, const std::string& path) {
  const json* v = Field(o, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) BadField(Join(path, key), "must be a string");
  std::string s = v->get<std::string>();
  CheckNoNul(s, Join(path, key));
  return s;
}

std::string GetString(const json& o, const char* key, const std::string& path) {
  auto s = OptString(o, key, path);
  if (!s) BadField(Join(path, key), "is required");
  return *s;
}

bool OptBool(const json& o, const char* key, const std::string& path, bool fallback) {
  const json* v = Field(o, key);
  if (!v) return fallback;
  if (!v->is_boolean()) BadField(Join(path, key), "must be a boolean");
  return v->get<bool>();
}

std::optional<int64_t> OptInt(const json& o, const char* key, const std::string& path, int64_t min, int64_t max) {
  const json* v = Field(o, key);
  if (!v) return std::nullopt;
  int64_t n;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) BadField(Join(path, key), "is out of range");
    n = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    n = v->get<int64_t>();
  } else {
    BadField(Join(path, key), "must be an integer");
  }
  if (n < min || n > max) {
    BadField(Join(path, key), "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return n;
}

int64_t GetInt(const json& o, const char* key, const std::string& path, int64_t min, int64_t max) {
  auto n = OptInt(o, key, path, min, max);
  if (!n) BadField(Join(path, key), "is required");
  return *n;
}

std::optional<uint64_t> OptUint64(const json& o, const char* key, const std::string& path) {
  const json* v = Field(o, key);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<uint64_t>();
  if (v->is_number_integer() && v->get<int64_t>() >= 0) return static_cast<uint64_t>(v->get<int64_t>());
  BadField(Join(path, key), "must be a non-negative integer");
}

std::vector<std::string> OptStrings(const json& o, const char* key, const std::string& path, size_t maxItems) {
  std::vector<std::string> out;
  const json* v = Field(o, key);
  if (!v) return out;
  std::string p = Join(path, key);
  if (!v->is_array()) BadField(p, "must be an array of strings");
  if (v->size() > maxItems) BadField(p, "has more than " + std::to_string(maxItems) + " items");
  for (size_t i = 0; i < v->size(); i++) {
    const json& e = (*v)[i];
    std::string ep = p + "[" + std::to_string(i) + "]";
    if (!e.is_string()) BadField(ep, "must be a string");
    out.push_back(e.get<std::string>());
    CheckNoNul(out.back(), ep);
  }
  return out;
}

const json* OptObject(const json& o, const char* key, const std::string& path) {
  const json* v = Field(o, key);
  if (v && !v->is_object()) BadField(Join(path, key), "must be an object");
  return v;
}

const json& GetObject(const json& o, const char* key, const std::string& path) {
  const json* v = OptObject(o, key, path);
  if (!v) BadField(Join(path, key), "is required");
  return *v;
}

const json* OptArray(const json& o, const char* key, const std::string& path) {
  const json* v = Field(o, key);
  if (v && !v->is_array()) BadField(Join(path, key), "must be an array");
  return v;
}

}  // namespace agent
