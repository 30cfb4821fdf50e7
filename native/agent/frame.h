// ttRPC-style framing (docs/agent-protocol.md, "Framing"): a 10-byte big-endian header
// (u32 payload length, u32 stream id, u8 type, u8 flags) followed by the payload.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace agent {

constexpr size_t kHeaderSize = 10;
// Largest payload either side accepts; a larger length is a protocol error that closes the session.
constexpr uint32_t kMaxPayload = 1 << 20;
// Largest stdio chunk in one data frame.
constexpr uint32_t kMaxDataChunk = 64 * 1024;
// Largest data frame the agent splices from a pipe in one go.
constexpr uint32_t kMaxSplice = 1024 * 1024;
// Credit each side starts with on every stdio stream; more is granted by window updates.
constexpr uint32_t kInitialWindow = 1024 * 1024;
// Upper bound of the credit a peer may hold on one stream (bounds the receiver's buffer).
constexpr uint32_t kMaxWindow = 4 * 1024 * 1024;

enum FrameType : uint8_t { kRequest = 1, kResponse = 2, kData = 3 };

// Flags of data frames.
constexpr uint8_t kFlagClose = 0x01;   // sender will send no more data on this stream (EOF)
constexpr uint8_t kFlagWindow = 0x08;  // payload is a u32 credit increment, not stdio bytes

struct Frame {
  uint32_t stream = 0;
  uint8_t type = 0;
  uint8_t flags = 0;
  std::string_view payload;  // valid until the next call to FrameDecoder::Next/Append
};

// Incremental decoder: Append() bytes as they arrive, then call Next() until it returns false.
// Memory is bounded by kHeaderSize + kMaxPayload plus one read.
class FrameDecoder {
 public:
  // Appends received bytes. Throws Error(kInvalidArgument) on a frame larger than kMaxPayload.
  void Append(const char* data, size_t len);
  // Fills `frame` with the next complete frame; false when more bytes are needed.
  bool Next(Frame* frame);
  size_t buffered() const { return buf_.size() - pos_; }
  void Reset() {
    buf_.clear();
    pos_ = 0;
  }

 private:
  std::string buf_;
  size_t pos_ = 0;
};

// Appends one encoded frame to `out`.
void EncodeFrame(std::string* out, uint32_t stream, uint8_t type, uint8_t flags, std::string_view payload);
void PutU32(char* p, uint32_t v);
uint32_t GetU32(const char* p);

}  // namespace agent
