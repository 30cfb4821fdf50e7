// Errors, fds and argument readers shared by every syscall family.
#include "addon/common.h"

#include <string.h>
#include <unistd.h>

namespace vmpod {

void ThrowSys(std::string syscall, int err, std::string target, std::string detail) {
  throw SysError{std::move(syscall), err, std::move(target), std::move(detail)};
}

Napi::Error ToJsError(Napi::Env env, const SysError& e) {
  const char* name = strerrorname_np(e.err);
  const char* desc = strerrordesc_np(e.err);
  std::string message = e.syscall + ": " + (desc ? desc : "Unknown error");
  if (!e.target.empty()) message += " (" + e.target + ")";
  if (!e.detail.empty()) message += ": " + e.detail;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", name ? name : ("E" + std::to_string(e.err)));
  error.Set("errno", Napi::Number::New(env, e.err));
  error.Set("syscall", e.syscall);
  error.Set("description", desc ? desc : "Unknown error");
  if (!e.target.empty()) error.Set("target", e.target);
  if (!e.detail.empty()) error.Set("detail", e.detail);
  return error;
}

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.Release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) close(fd_);
}

std::string ArgString(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

Napi::Object ArgObject(const Napi::Value& v, const char* what) {
  if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an object");
  return v.As<Napi::Object>();
}

uint32_t ArgU32(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) {
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(d);
}

bool Has(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

std::optional<std::string> OptString(const Napi::Object& o, const char* key) {
  if (!Has(o, key)) return std::nullopt;
  return ArgString(o.Get(key), key);
}

std::optional<uint32_t> OptU32(const Napi::Object& o, const char* key) {
  if (!Has(o, key)) return std::nullopt;
  return ArgU32(o.Get(key), key);
}

std::optional<bool> OptBool(const Napi::Object& o, const char* key) {
  if (!Has(o, key)) return std::nullopt;
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

}  // namespace vmpod
