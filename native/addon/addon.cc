// Entry point of the vmpod Node addon: each syscall family registers its functions.
#include "addon/common.h"

namespace vmpod { void InitMount(Napi::Env, Napi::Object); void InitSriov(Napi::Env, Napi::Object); }  // mount.cc, sriov.cc

namespace vmpod { void InitFdpass(Napi::Env, Napi::Object); }  // fdpass.cc
namespace vmpod { void InitFlock(Napi::Env, Napi::Object); }  // flock.cc
namespace vmpod { void InitPathfd(Napi::Env, Napi::Object); }  // pathfd.cc
namespace vmpod { void InitLayer(Napi::Env, Napi::Object); }  // layer.cc (after InitPathfd: adds to pathConstants)
namespace vmpod { void InitPty(Napi::Env, Napi::Object); }  // pty.cc (vmpod-runtime terminals)

namespace vmpod {  // host networking: netns.cc, link.cc, address.cc, route.cc, tc.cc, tap.cc, packet.cc
void InitNetns(Napi::Env, Napi::Object);
void InitLink(Napi::Env, Napi::Object);
void InitAddress(Napi::Env, Napi::Object);
void InitRoute(Napi::Env, Napi::Object);
void InitNeigh(Napi::Env, Napi::Object);
void InitTc(Napi::Env, Napi::Object);
void InitTap(Napi::Env, Napi::Object);
void InitPacket(Napi::Env, Napi::Object);
}  // namespace vmpod

#ifdef VMPOD_COVERAGE
// Coverage builds only: libgcov writes a process's profile at exit, and a test worker that is
// killed, or exits through a path that skips exit handlers, loses everything it counted. The
// tests' setup calls this after each file: the counts so far are added to the .gcda files and
// zeroed, so the exit writes only what came after.
extern "C" void __gcov_dump(void);
extern "C" void __gcov_reset(void);
static Napi::Value CoverageFlush(const Napi::CallbackInfo& info) {
  __gcov_dump();
  __gcov_reset();
  return info.Env().Undefined();
}
#endif

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, vmpod::kAbiVersion));
#ifdef VMPOD_COVERAGE
  exports.Set("coverageFlush", Napi::Function::New(env, CoverageFlush, "coverageFlush"));
#endif
  vmpod::InitMount(env, exports);
  vmpod::InitSriov(env, exports);
  vmpod::InitFdpass(env, exports);
  vmpod::InitFlock(env, exports);
  vmpod::InitPathfd(env, exports);
  vmpod::InitLayer(env, exports);
  vmpod::InitPty(env, exports);
  vmpod::InitNetns(env, exports);
  vmpod::InitLink(env, exports);
  vmpod::InitAddress(env, exports);
  vmpod::InitRoute(env, exports);
  vmpod::InitNeigh(env, exports);
  vmpod::InitTc(env, exports);
  vmpod::InitTap(env, exports);
  vmpod::InitPacket(env, exports);
  return exports;
}

NODE_API_MODULE(vmpod, InitAddon)
