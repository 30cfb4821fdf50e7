// Small readers for netlink attributes received from the kernel (lengths checked before reading).
#pragma once
#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <string.h>

#include <optional>
#include <string>
#include <vector>

namespace vmpod::nla {

using Table = std::vector<const nlattr*>;

inline int Collect(const nlattr* attr, void* data) {
  auto* tb = static_cast<Table*>(data);
  uint16_t type = mnl_attr_get_type(attr);
  if (type < tb->size()) (*tb)[type] = attr;
  return MNL_CB_OK;
}

// Attributes of a message after its fixed header of `offset` bytes, indexed by type.
inline Table Parse(const nlmsghdr* nlh, size_t offset, size_t max) {
  Table tb(max + 1, nullptr);
  mnl_attr_parse(nlh, offset, Collect, &tb);
  return tb;
}

inline Table Nested(const nlattr* nest, size_t max) {
  Table tb(max + 1, nullptr);
  if (nest != nullptr) mnl_attr_parse_nested(nest, Collect, &tb);
  return tb;
}

inline std::optional<uint32_t> U32(const nlattr* a) {
  if (a == nullptr || mnl_attr_get_payload_len(a) < 4) return std::nullopt;
  return mnl_attr_get_u32(a);
}

inline uint8_t U8(const nlattr* a) {
  return a != nullptr && mnl_attr_get_payload_len(a) >= 1 ? mnl_attr_get_u8(a) : 0;
}

inline std::string Str(const nlattr* a) {
  if (a == nullptr) return {};
  auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
  return std::string(p, strnlen(p, mnl_attr_get_payload_len(a)));
}

// An IPv4/IPv6 address attribute as text; "" when absent or malformed.
inline std::string Ip(const nlattr* a, int family) {
  size_t want = family == AF_INET ? 4 : family == AF_INET6 ? 16 : 0;
  if (a == nullptr || want == 0 || mnl_attr_get_payload_len(a) != want) return {};
  char text[INET6_ADDRSTRLEN];
  return inet_ntop(family, mnl_attr_get_payload(a), text, sizeof text) ? text : "";
}

// A struct attribute, copied out when it is at least as long as T.
template <class T>
std::optional<T> Struct(const nlattr* a) {
  if (a == nullptr || mnl_attr_get_payload_len(a) < sizeof(T)) return std::nullopt;
  T value;
  memcpy(&value, mnl_attr_get_payload(a), sizeof(T));
  return value;
}

}  // namespace vmpod::nla
