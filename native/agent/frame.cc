#include "agent/frame.h"

#include "agent/util.h"

namespace agent {

void PutU32(char* p, uint32_t v) {
  p[0] = static_cast<char>(v >> 24);
  p[1] = static_cast<char>(v >> 16);
  p[2] = static_cast<char>(v >> 8);
  p[3] = static_cast<char>(v);
}

uint32_t GetU32(const char* p) {
  auto b = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

void FrameDecoder::Append(const char* data, size_t len) {
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > 64 * 1024) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(data, len);
  if (buffered() >= 4 && GetU32(buf_.data() + pos_) > kMaxPayload) {
    throw Error(Code::kInvalidArgument, "frame of " + std::to_string(GetU32(buf_.data() + pos_)) +
                                            " bytes exceeds the maximum of " + std::to_string(kMaxPayload));
  }
}

bool FrameDecoder::Next(Frame* frame) {
  if (buffered() < kHeaderSize) return false;
  const char* h = buf_.data() + pos_;
  uint32_t len = GetU32(h);
  if (len > kMaxPayload) {
    throw Error(Code::kInvalidArgument,
                "frame of " + std::to_string(len) + " bytes exceeds the maximum of " + std::to_string(kMaxPayload));
  }
  if (buffered() < kHeaderSize + len) return false;
  frame->stream = GetU32(h + 4);
  frame->type = static_cast<uint8_t>(h[8]);
  frame->flags = static_cast<uint8_t>(h[9]);
  frame->payload = std::string_view(h + kHeaderSize, len);
  pos_ += kHeaderSize + len;
  return true;
}

void EncodeFrame(std::string* out, uint32_t stream, uint8_t type, uint8_t flags, std::string_view payload) {
  char h[kHeaderSize];
  PutU32(h, static_cast<uint32_t>(payload.size()));
  PutU32(h + 4, stream);
  h[8] = static_cast<char>(type);
  h[9] = static_cast<char>(flags);
  out->append(h, kHeaderSize);
  out->append(payload);
}

}  // namespace agent
