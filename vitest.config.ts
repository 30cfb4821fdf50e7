import { defineConfig } from 'vitest/config';

// Two projects: `unit` needs no privileges; `privileged` runs as root against real kernel
// objects and real VMs, and skips (with a visible reason) what the machine lacks.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 20_000,
        },
      },
      {
        test: {
          name: 'privileged',
          include: ['test/privileged/**/*.test.ts'],
          // Fails the run when anything a test made is still there at the end.
          globalSetup: ['test/privileged/global-setup.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          // Real VMs under TCG are CPU-bound: keep them from starving each other on 2 cores.
          fileParallelism: false,
        },
      },
    ],
  },
});
