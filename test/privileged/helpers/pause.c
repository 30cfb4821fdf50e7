/*
 * The pod sandbox's process for the CRI tests (the pause image): it does nothing but hold the
 * pod's namespaces. As the container's init it reaps any child handed to it, and exits 0 on
 * SIGTERM or SIGINT. Built with `gcc -static` by helpers/pause-image.ts.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

static void nothing(int sig) {
  (void)sig;
}

int main(void) {
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGTERM);
  sigaddset(&wanted, SIGINT);
  sigaddset(&wanted, SIGCHLD);
  /* Handlers too: a namespace's init drops signals whose action is the default. */
  struct sigaction sa = {0};
  sa.sa_handler = nothing;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGCHLD, &sa, NULL);
  /* Blocked and taken with sigwaitinfo: none is missed between two waits. */
  sigprocmask(SIG_BLOCK, &wanted, NULL);
  for (;;) {
    int sig = sigwaitinfo(&wanted, NULL);
    if (sig == SIGTERM || sig == SIGINT) return 0;
    if (sig == SIGCHLD) {
      while (waitpid(-1, NULL, WNOHANG) > 0) {
      }
    }
  }
}
