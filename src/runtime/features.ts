/**
 * `vmpod-runtime features`: the runtime-spec features document, with what is true of vmpod.
 *
 * @module
 */
import { CPUS_ANNOTATION, MEMORY_ANNOTATION, SANDBOX_ANNOTATION } from './sandbox-choice.js';

/** The features JSON (runtime-spec features.md). */
export function features(): Record<string, unknown> {
  return {
    ociVersionMin: '1.0.0',
    ociVersionMax: '1.0.2',
    // createContainer and startContainer would run inside the VM: refused at create.
    hooks: ['prestart', 'createRuntime', 'poststart', 'poststop'],
    mountOptions: [
      'async', 'atime', 'bind', 'defaults', 'dev', 'diratime', 'dirsync', 'exec', 'mand', 'noatime', 'nodev', 'nodiratime',
      'noexec', 'nomand', 'norelatime', 'nostrictatime', 'nosuid', 'private', 'rbind', 'relatime', 'remount', 'ro', 'rprivate',
      'rshared', 'rslave', 'runbindable', 'rw', 'shared', 'slave', 'strictatime', 'suid', 'sync', 'unbindable',
    ],
    linux: {
      // In the guest; `network` is the VM's (the spec's network namespace gives the VM its NICs).
      namespaces: ['ipc', 'mount', 'network', 'pid', 'uts'],
      capabilities: [
        'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
        'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW',
        'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT',
        'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD',
        'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
        'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
      ],
      // The guest's cgroup v2; --systemd-cgroup has no effect (nothing of the container is in the host's cgroups).
      cgroup: { v1: false, v2: true, systemd: false, systemdUser: false },
      seccomp: { enabled: false },
      apparmor: { enabled: false },
      selinux: { enabled: false },
    },
    annotations: {
      'io.vmpod.runtime': 'vmpod-runtime',
      'io.vmpod.runtime.sandbox-annotation': SANDBOX_ANNOTATION,
      'io.vmpod.runtime.cpus-annotation': CPUS_ANNOTATION,
      'io.vmpod.runtime.memory-annotation': MEMORY_ANNOTATION,
    },
  };
}
