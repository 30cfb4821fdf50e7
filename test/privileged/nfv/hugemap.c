/* A DPDK-style use of hugepages, for the guest: map 2 MiB pages anonymously (MAP_HUGETLB) and
 * as files on each hugetlbfs directory given, write them, report. Built with gcc -static. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SZ (2UL * 1024 * 1024)

int main(int argc, char **argv) {
  void *p = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap MAP_HUGETLB");
    return 1;
  }
  memset(p, 0xab, SZ);
  munmap(p, SZ);
  printf("anonymous MAP_HUGETLB ok\n");
  for (int i = 1; i < argc; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/hugemap.%d", argv[i], (int)getpid());
    int fd = open(path, O_CREAT | O_RDWR, 0600);
    if (fd < 0) {
      perror(path);
      return 2;
    }
    void *q = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (q == MAP_FAILED) {
      perror("mmap hugetlbfs file");
      return 3;
    }
    memset(q, 0xcd, SZ);
    if (((unsigned char *)q)[SZ - 1] != 0xcd) return 4;
    munmap(q, SZ);
    close(fd);
    unlink(path);
    printf("%s ok\n", argv[i]);
  }
  return 0;
}
