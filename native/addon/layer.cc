// Applying an OCI image layer to a directory (src/image/unpack.ts): the *at calls the unpacker
// needs, each resolved inside the root it is given. Every path below the root fd is looked up with
// openat2(2) RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, so `..` and absolute symlinks met on the way
// resolve as if the root were `/` (what umoci and containerd do when they unpack), and the final
// component is always operated on with an *at call that does not follow a symlink.
#include <fcntl.h>
#include <linux/openat2.h>

#include "addon/common.h"

namespace vmpod {

// Called after InitPathfd: adds the constants the unpacker and readFileInRoot need to
// pathConstants (the object pathfd.cc made).
void InitLayer(Napi::Env env, Napi::Object exports) {
  Napi::Object c = exports.Get("pathConstants").As<Napi::Object>();
  c.Set("RESOLVE_IN_ROOT", Napi::Number::New(env, RESOLVE_IN_ROOT));
  c.Set("O_NONBLOCK", Napi::Number::New(env, O_NONBLOCK));
}

}  // namespace vmpod
