// Built into the ASan+UBSan agent only (vmpod-agent-asan): its sanitizer settings, whoever starts
// it and with whatever environment (the stand-in hypervisor starts its agents with a clean one).
// Every report also goes to a file under VMPOD_SANITIZER_REPORTS (the build's asan-reports/), one
// per process, so a test run can fail on a report even when the agent's stderr went to a log
// nobody reads. ASAN_OPTIONS / UBSAN_OPTIONS given in the environment still take precedence.
#ifndef VMPOD_SANITIZER_REPORTS
#error "VMPOD_SANITIZER_REPORTS must name the directory for the reports"
#endif

#define VMPOD_REPORT_PATH "log_path=" VMPOD_SANITIZER_REPORTS "/report"

extern "C" const char* __asan_default_options() {
  // halt and abort on the first error, so the agent dies visibly; leaks are checked when the
  // agent returns from main (a graceful Shutdown); a container's child leaves through execve
  // or _exit, which skip the check (it is a copy of the agent, not a process of its own).
  // An 8 MiB quarantine (default 256) still catches a use shortly after a free, and keeps the
  // agent's RSS near the release build's: agent-robustness.test.ts bounds its growth (32 MiB
  // over 91 hostile sessions; the default quarantine alone grew it by 37 MiB).
  return VMPOD_REPORT_PATH ":halt_on_error=1:abort_on_error=1:detect_leaks=1:print_stacktrace=1:quarantine_size_mb=8";
}

extern "C" const char* __ubsan_default_options() {
  return VMPOD_REPORT_PATH ":halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

extern "C" const char* __lsan_default_options() { return VMPOD_REPORT_PATH; }
