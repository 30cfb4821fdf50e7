// Shared helpers of the addon: errno-carrying errors and async work off the main thread.
#pragma once
#include <napi.h>

namespace vmpod {

// Bumped whenever the native surface declared in src/native.ts changes.
constexpr int kAbiVersion = 1;

}  // namespace vmpod
