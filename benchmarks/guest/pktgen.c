/* Guest packet generator for the vhost-user benchmark: sends 64-byte Ethernet frames
 * (broadcast, EtherType 0x88b5 "local experimental", so no host stack acts on them) on one
 * interface through an AF_PACKET socket for SECONDS, then prints "SENT ELAPSED_NS". A frame
 * the driver cannot queue (ENOBUFS/EAGAIN) is not counted. Built with gcc -static. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: pktgen IFNAME SECONDS\n");
    return 2;
  }
  int ifindex = if_nametoindex(argv[1]);
  if (ifindex == 0) {
    perror(argv[1]);
    return 1;
  }
  int fd = socket(AF_PACKET, SOCK_RAW, htons(0x88b5));
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(0x88b5), .sll_ifindex = ifindex, .sll_halen = 6};
  memset(addr.sll_addr, 0xff, 6);
  unsigned char frame[60];
  memset(frame, 0, sizeof frame);
  memset(frame, 0xff, 6);                                 /* broadcast */
  frame[6] = 0x02;                                        /* locally administered source */
  frame[12] = 0x88, frame[13] = 0xb5;
  long long start = now_ns(), end = start + (long long)(atof(argv[2]) * 1e9), t = start;
  long long sent = 0;
  while (t < end) {
    for (int i = 0; i < 64; i++) {
      if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&addr, sizeof addr) == (ssize_t)sizeof frame) sent++;
      else if (errno != ENOBUFS && errno != EAGAIN) {
        perror("sendto");
        return 1;
      }
    }
    t = now_ns();
  }
  printf("%lld %lld\n", sent, t - start);
  return 0;
}
