#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "agent/agent.h"

namespace agent {

Session::Session(Agent& agent, uint64_t id, int fd, bool ownsFd, std::string name)
    : agent_(agent), id_(id), fd_(fd), ownsFd_(ownsFd), name_(std::move(name)) {}

Session::~Session() {
  agent_.loop().Remove(token_);
  if (ownsFd_ && fd_ >= 0) close(fd_);
}

void Session::Start() {
  token_ = agent_.loop().Add(fd_, EPOLLIN, [this](uint32_t ev) { OnEvents(ev); });
  Debug("session %llu (%s) opened", static_cast<unsigned long long>(id_), name_.c_str());
}

void Session::UpdateInterest() {
  if (closed_ || paused_) return;
  bool want = queued() > 0;
  if (want == wantOut_) return;
  wantOut_ = want;
  agent_.loop().Modify(token_, EPOLLIN | (want ? uint32_t(EPOLLOUT) : 0u));
}

void Session::OnEvents(uint32_t events) {
  if (closed_ || paused_) return;
  if (events & EPOLLOUT) Flush();
  if (closed_ || paused_) return;
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    // Read a bounded amount per wakeup so one busy session cannot starve the others. The
    // EPOLLHUP bit itself is not trusted: on virtio-serial it can be stale while a new host's
    // bytes are already readable; read() returning 0 is what says the peer is gone.
    char buf[64 * 1024];
    for (int round = 0; round < 16 && !closed_ && !paused_; round++) {
      ssize_t n = read(fd_, buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        Close(std::string("read: ") + strerror(errno));
        break;
      }
      if (n == 0) {
        if (port_) {
          HostGone();
        } else {
          Close("end of stream");
        }
        break;
      }
      Receive(buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof buf) break;
    }
  }
}

// A virtio-serial port whose host went away: the session stays (a host may be back at any
// moment, and the guest may even see its bytes before it sees it connect), but stops reading
// until the port is connected again; see Agent::WatchPort.
void Session::HostGone() {
  Debug("session %s: the host hung up", name_.c_str());
  if (!resetSinceHangup_) {
    // Output for the host that left, possibly cut mid-frame: the next host must not see it.
    out_.clear();
    outPos_ = 0;
    splicePos_ = 0;
  }
  resetSinceHangup_ = false;
  paused_ = true;
  agent_.loop().Remove(token_);
  token_ = 0;
  wantOut_ = false;
  agent_.OnHostGone(id_);
}

void Session::Resume() {
  if (!paused_ || closed_) return;
  paused_ = false;
  token_ = agent_.loop().Add(fd_, EPOLLIN, [this](uint32_t ev) { OnEvents(ev); });
  Debug("session %s: a host is connected", name_.c_str());
  Flush();
  OnEvents(EPOLLIN);
}

void Session::Receive(const char* data, size_t len) {
  try {
    decoder_.Append(data, len);
    Frame frame;
    while (!closed_ && decoder_.Next(&frame)) OnFrame(frame);
  } catch (const Error& e) {
    Fail(e.what());
  }
}

void Session::OnFrame(const Frame& frame) {
  if (frame.stream % 2 == 0) {
    Fail("stream id " + std::to_string(frame.stream) + " is even (client stream ids are odd)");
    return;
  }
  switch (frame.type) {
    case kRequest:
      if (frame.stream == 1 && lastRequest > 0 && IsHello(frame.payload)) {
        // A new host on the same channel: on virtio-serial, a quick close and reopen by the host
        // can reach us as plain data, with no hang-up in between. Start over.
        Reset();
      }
      if (frame.stream <= lastRequest) {
        Fail("request stream id " + std::to_string(frame.stream) + " is not above the last one (" +
             std::to_string(lastRequest) + ")");
        return;
      }
      lastRequest = frame.stream;
      agent_.Dispatch(*this, frame.stream, frame.payload);
      break;
    case kData:
      // Flags: none (stdio bytes), CLOSE with an empty payload, or WINDOW; nothing else.
      if (frame.flags != 0 && frame.flags != kFlagClose && frame.flags != kFlagWindow) {
        char hex[3];
        snprintf(hex, sizeof hex, "%x", frame.flags);
        Fail("data frame with flags 0x" + std::string(hex));
        return;
      }
      if (frame.flags == kFlagClose && !frame.payload.empty()) {
        Fail("close frame with " + std::to_string(frame.payload.size()) + " bytes");
        return;
      }
      agent_.OnData(*this, frame);
      break;
    default:
      Fail("unexpected frame type " + std::to_string(frame.type));
  }
}

bool Session::IsHello(std::string_view payload) {
  try {
    json request = ParseObject(payload);
    const json* method = Field(request, "method");
    return method && method->is_string() && *method == "Hello";
  } catch (const Error&) {
    return false;
  }
}

void Session::Reset() {
  Log("session %s: a new host connected; the previous one is gone", name_.c_str());
  // Whatever was queued was for the previous host.
  if (spliceRemaining_ > 0) {
    std::string discard(spliceRemaining_, '\0');
    ssize_t n = read(spliceFd_.get(), discard.data(), discard.size());
    (void)n;
    spliceRemaining_ = 0;
    spliceFd_.reset();
  }
  out_.clear();
  outPos_ = 0;
  splicePos_ = 0;
  helloDone = false;
  lastRequest = 0;
  resetSinceHangup_ = true;
  agent_.OnSessionReset(id_);
  UpdateInterest();
}

void Session::SendFrame(uint32_t stream, uint8_t type, uint8_t flags, std::string_view payload) {
  if (closed_) return;
  EncodeFrame(&out_, stream, type, flags, payload);
  Flush();
}

void Session::SendResult(uint32_t stream, const json& result) {
  SendFrame(stream, kResponse, 0, json{{"result", result}}.dump(-1, ' ', false, json::error_handler_t::replace));
}

void Session::SendError(uint32_t stream, const Error& e) {
  json err = {{"code", CodeName(e.code())}, {"message", e.what()}};
  if (e.err()) err["errno"] = ErrnoName(e.err());
  SendFrame(stream, kResponse, 0, json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace));
}

ssize_t Session::SendDataFromFd(uint32_t stream, int fd, size_t max) {
  if (closed_) return -1;
  if (spliceRemaining_ > 0) {  // see congested()
    errno = EAGAIN;
    return -1;
  }
  // One readv() fills several frames' payload slots, leaving room for their headers: fewer
  // system calls per megabyte, and each frame still fits one write() of the channel.
  size_t chunk = dataChunk_;
  size_t slots = std::min<size_t>((max + chunk - 1) / chunk, 16);
  size_t start = out_.size();
  out_.resize(start + slots * (kHeaderSize + chunk));
  iovec iov[16];
  size_t left = max;
  for (size_t i = 0; i < slots; i++) {
    iov[i].iov_base = out_.data() + start + i * (kHeaderSize + chunk) + kHeaderSize;
    iov[i].iov_len = std::min(chunk, left);
    left -= iov[i].iov_len;
  }
  ssize_t n;
  do {
    n = readv(fd, iov, static_cast<int>(slots));
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    int err = errno;
    out_.resize(start);
    errno = err;
    return n;
  }
  size_t remaining = static_cast<size_t>(n), end = start;
  for (size_t i = 0; i < slots && remaining > 0; i++) {
    size_t len = std::min(remaining, iov[i].iov_len);
    char* h = out_.data() + start + i * (kHeaderSize + chunk);
    PutU32(h, static_cast<uint32_t>(len));
    PutU32(h + 4, stream);
    h[8] = static_cast<char>(kData);
    h[9] = 0;
    end = (h - out_.data()) + kHeaderSize + len;
    remaining -= len;
  }
  out_.resize(end);  // the last slot may be partial; nothing follows it
  return n;
}

ssize_t Session::SpliceDataFromFd(uint32_t stream, int fd, size_t max) {
  if (closed_ || !canSplice_ || queued() > 0) return SendDataFromFd(stream, fd, max);
  int avail = 0;
  if (ioctl(fd, FIONREAD, &avail) < 0 || avail <= 0) return SendDataFromFd(stream, fd, max);  // EOF, EAGAIN
  if (static_cast<size_t>(avail) > max) return SendDataFromFd(stream, fd, max);
  size_t n = static_cast<size_t>(avail);  // the whole pipe: no pipe buffer is split
  // Only we read this pipe, so the n bytes announced in the header stay there until spliced.
  Fd dup(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return SendDataFromFd(stream, fd, max);
  char h[kHeaderSize];
  PutU32(h, static_cast<uint32_t>(n));
  PutU32(h + 4, stream);
  h[8] = static_cast<char>(kData);
  h[9] = 0;
  out_.append(h, kHeaderSize);
  spliceFd_ = std::move(dup);
  splicePos_ = out_.size();
  spliceRemaining_ = n;
  Flush();
  return static_cast<ssize_t>(n);
}

void Session::Flush() {
  if (closed_) return;
  bool wasCongested = congested();
  for (;;) {
    // Queued bytes up to the splice point, then the spliced bytes, then the rest.
    size_t limit = spliceRemaining_ ? splicePos_ : out_.size();
    if (outPos_ < limit) {
      ssize_t n = write(fd_, out_.data() + outPos_, limit - outPos_);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        Close(std::string("write: ") + strerror(errno));
        return;
      }
      outPos_ += n;
      continue;
    }
    if (spliceRemaining_ == 0) break;
    ssize_t n = splice(spliceFd_.get(), nullptr, fd_, nullptr, spliceRemaining_, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0 && spliceRemaining_ > 0 && !(n < 0 && errno == EINVAL)) {
      Close(std::string("splice: ") + (n == 0 ? "source ended early" : strerror(errno)));
      return;
    }
    if (n < 0) {
      // This channel does not take splice: copy the promised bytes through user space instead.
      canSplice_ = false;
      std::string data(spliceRemaining_, '\0');
      ssize_t r = read(spliceFd_.get(), data.data(), data.size());
      if (r != static_cast<ssize_t>(data.size())) {
        Close("reading spliced data failed");
        return;
      }
      out_.insert(splicePos_, data);
      n = r;
    }
    spliceRemaining_ -= n;
    if (spliceRemaining_ == 0) spliceFd_.reset();
  }
  if (queued() == 0) {
    out_.clear();
    outPos_ = 0;
    splicePos_ = 0;
  } else if (outPos_ > 1024 * 1024 && (spliceRemaining_ == 0 || splicePos_ >= outPos_)) {
    out_.erase(0, outPos_);
    if (spliceRemaining_) splicePos_ -= outPos_;
    outPos_ = 0;
  }
  if (queued() > kHardLimit) {
    Close("the host does not read its responses");
    return;
  }
  UpdateInterest();
  if (wasCongested && !congested()) agent_.OnSessionDrained(id_);
}

void Session::Fail(const std::string& why) {
  if (closed_) return;
  Log("session %s: protocol error: %s", name_.c_str(), why.c_str());
  failed_ = true;
  SendError(0, Error(Code::kInvalidArgument, "protocol error: " + why));
  Close("protocol error");
}

void Session::Close(const std::string& why) {
  if (closed_) return;
  Debug("session %llu (%s) closed: %s", static_cast<unsigned long long>(id_), name_.c_str(), why.c_str());
  // Best effort: push out what is queued (e.g. the protocol error) before going away.
  if (queued() > 0) {
    ssize_t n = write(fd_, out_.data() + outPos_, queued());
    (void)n;
  }
  closed_ = true;
  agent_.loop().Remove(token_);
  token_ = 0;
  agent_.OnSessionClosed(id_);
}

}  // namespace agent
