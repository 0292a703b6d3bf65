"""Why fleets use vmap: K separate 3x3 convolutions vs one grouped convolution (what a
graph rewrite fusing K networks would emit) vs vmap over stacked weights, forward +
backward on 128 x C x 28 x 28 per member, best of 5, 1 thread.

    python benchmarks/conv_groups.py
"""
import torch, time, torch.nn.functional as F
torch.set_num_threads(1)
def bench(f, n=5):
    f(); best = 1e9
    for _ in range(n):
        t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
    return best
for C in (8, 16):
    for K in (1, 4, 16):
        x = [torch.randn(128, C, 28, 28, requires_grad=True) for _ in range(K)]
        w = [torch.randn(C, C, 3, 3, requires_grad=True) for _ in range(K)]
        def sep():
            out = sum(F.conv2d(a, b, padding=1).sum() for a, b in zip(x, w)); out.backward()
        xg = torch.cat(x, 1).detach().requires_grad_(); wg = torch.cat(w, 0).detach().requires_grad_()
        def grp():
            F.conv2d(xg, wg, padding=1, groups=K).sum().backward()
        xs = torch.stack(x).detach().requires_grad_(); ws = torch.stack(w).detach().requires_grad_()
        vm = torch.func.vmap(lambda a, b: F.conv2d(a, b, padding=1))
        def vmp():
            vm(xs, ws).sum().backward()
        print(f"C={C} K={K}: separate {bench(sep)*1e3:.1f} ms, grouped {bench(grp)*1e3:.1f} ms, vmap {bench(vmp)*1e3:.1f} ms (fwd+bwd)")
