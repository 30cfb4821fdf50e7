// The frame decoder: a byte stream from the host, cut into reads of any size. Every frame it
// yields re-encodes to exactly the bytes it came from, a too-long length is refused with Error,
// window updates never grow a stream's credit beyond kMaxWindow, and request payloads go through
// the request envelope parser.
#include <cstddef>
#include <cstdint>
#include <string>

#include "agent/frame.h"
#include "agent/requests.h"
#include "common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // The first two bytes seed the read sizes; the rest is the stream.
  uint32_t seed = data[0] | (uint32_t(data[1]) << 8);
  std::string_view stream = fuzz::AsText(data + 2, size - 2);
  agent::FrameDecoder decoder;
  std::string reencoded;
  size_t fed = 0;
  uint32_t credit = agent::kInitialWindow;
  bool refused = false;
  while (fed < stream.size() && !refused) {
    seed = seed * 1103515245 + 12345;
    size_t chunk = 1 + (seed >> 16) % (seed & 0x8000 ? 4096 : 16);
    chunk = std::min(chunk, stream.size() - fed);
    refused = !fuzz::Try("FrameDecoder::Append", [&] { decoder.Append(stream.data() + fed, chunk); });
    fed += chunk;
    agent::Frame frame;
    while (!refused) {
      bool got = false;
      refused = !fuzz::Try("FrameDecoder::Next", [&] { got = decoder.Next(&frame); });
      if (!got) break;
      FUZZ_CHECK(frame.payload.size() <= agent::kMaxPayload, "payload above the maximum");
      agent::EncodeFrame(&reencoded, frame.stream, frame.type, frame.flags, frame.payload);
      if (frame.type == agent::kData && (frame.flags & agent::kFlagWindow)) {
        agent::WindowUpdate w = agent::GrowWindow(credit, frame.payload);
        if (w.error.empty()) {
          FUZZ_CHECK(w.credit <= agent::kMaxWindow && w.credit >= credit, "window out of bounds");
          credit = w.credit;
        } else {
          FUZZ_CHECK(w.credit == credit, "a refused window update changed the credit");
        }
      } else if (frame.type == agent::kData && credit > 0) {
        credit -= std::min<uint32_t>(credit, frame.payload.size());
      }
      if (frame.type == agent::kRequest) {
        fuzz::Try("ParseEnvelope", [&] { agent::ParseEnvelope(frame.payload); });
      }
    }
  }
  // What was decoded is exactly a prefix of what was fed.
  FUZZ_CHECK(reencoded.size() <= fed, "decoded more than was fed");
  FUZZ_CHECK(stream.substr(0, reencoded.size()) == reencoded, "a frame does not re-encode to its bytes");
  if (!refused) FUZZ_CHECK(reencoded.size() + decoder.buffered() == fed, "bytes lost by the decoder");
  return 0;
}
