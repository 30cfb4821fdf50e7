// Entry point of the vmpod Node addon: each syscall family registers its functions.
#include "addon/common.h"

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, vmpod::kAbiVersion));
  return exports;
}

NODE_API_MODULE(vmpod, InitAddon)
