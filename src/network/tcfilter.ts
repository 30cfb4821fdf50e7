/**
 * Kata's "tcfilter" inter-network model: whatever arrives on one link leaves by the other, both
 * ways, through an ingress qdisc and a u32 match-all + mirred egress redirect filter on each.
 * It joins a VM's tap to the namespace's interface without a bridge, and keeps the interface's
 * MAC and addresses where CNI plugins put them.
 *
 * @module
 */
import * as validate from '../validate.js';
import { InvalidArgumentError } from '../errors.js';
import * as check from './check.js';
import { nsArg, type NetnsOption } from './netns.js';
import { addIngressQdisc, addRedirectFilter, deleteIngressQdisc } from './tc.js';

/**
 * Redirects traffic between `a` and `b` both ways:
 * ```
 * tc qdisc add dev A ingress
 * tc qdisc add dev B ingress
 * tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev B
 * tc filter add dev B parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev A
 * ```
 * The four requests are queued together (no round trip between them). On failure, the qdiscs
 * that were added are removed again.
 */
export async function connectTcFilter(a: string, b: string, options?: NetnsOption): Promise<void> {
  const first = validate.interfaceName(a, 'a');
  const second = validate.interfaceName(b, 'b');
  if (first === second) throw new InvalidArgumentError('b', `cannot redirect "${first}" to itself`);
  const netns = check.options(options, 'options').netns;
  nsArg(netns);
  const steps = [
    addIngressQdisc(first, { netns }),
    addIngressQdisc(second, { netns }),
    addRedirectFilter(first, second, { netns }),
    addRedirectFilter(second, first, { netns }),
  ];
  const results = await Promise.allSettled(steps);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (!failed) return;
  await Promise.allSettled(
    [first, second].filter((_, i) => results[i]?.status === 'fulfilled').map((dev) => deleteIngressQdisc(dev, { netns })),
  );
  throw failed.reason;
}

/** Undoes {@link connectTcFilter}: `tc qdisc del dev A ingress; tc qdisc del dev B ingress` (filters go with them). */
export async function disconnectTcFilter(a: string, b: string, options?: NetnsOption): Promise<void> {
  const first = validate.interfaceName(a, 'a');
  const second = validate.interfaceName(b, 'b');
  const netns = check.options(options, 'options').netns;
  nsArg(netns);
  const results = await Promise.allSettled([deleteIngressQdisc(first, { netns }), deleteIngressQdisc(second, { netns })]);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
