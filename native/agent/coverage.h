// Coverage builds only (cmake -DVMPOD_COVERAGE=ON, see docs/testing.md "Coverage"): hands the
// gcov profile of the agent running as PID 1 to the host before the VM powers off.
#pragma once

namespace agent {

#ifdef VMPOD_COVERAGE
/**
 * Writes the profile (gcov's .gcda files) under a folder of the initramfs, then copies each file
 * to the virtio-serial port "vmpod.coverage" when the VM has one (the host opens it as a file
 * when VMPOD_GUEST_COVERAGE_DIR is set). Called once, right before reboot(RB_POWER_OFF).
 */
void FlushCoverage();
#else
inline void FlushCoverage() {}
#endif

}  // namespace agent
