// Entry point of the vmpod Node addon: each syscall family registers its functions.
#include "addon/common.h"

namespace vmpod { void InitMount(Napi::Env, Napi::Object); void InitSriov(Napi::Env, Napi::Object); }  // mount.cc, sriov.cc

namespace vmpod { void InitFdpass(Napi::Env, Napi::Object); }  // fdpass.cc

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, vmpod::kAbiVersion));
  vmpod::InitMount(env, exports);
  vmpod::InitSriov(env, exports);
  vmpod::InitFdpass(env, exports);
  return exports;
}

NODE_API_MODULE(vmpod, InitAddon)
