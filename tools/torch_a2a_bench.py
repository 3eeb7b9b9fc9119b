"""The baseline for `nmoe bench rdep`: the expert-parallel token exchange a PyTorch user would write,
torchtitan-style. Dispatch: permute the routed rows by expert, exchange per-expert counts, all_to_all_single with
splits, then regroup the received rows by local expert. Combine: the reverse exchange, un-permute, and the
gate-weighted sum over each token's k slots. Same shapes, routing (uniform, k distinct experts per token), timing
(median of the iterations, slowest rank) and byte count (rows leaving a rank, both directions) as nmoe's bench.

Usage: python3 tools/torch_a2a_bench.py --nproc 4 --tokens 4096,16384,32768 --topk 6,8 --dim 2048 --experts 64
"""
import argparse
import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def ints(text):
    return [int(x) for x in text.split(',')]


def bench(rank, world, args, port, queue):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group('nccl', rank=rank, world_size=world, device_id=torch.device('cuda', rank))
    experts, dim = args.experts, args.dim
    local = experts // world
    results = []
    for tokens in ints(args.tokens):
        for k in ints(args.topk):
            gen = torch.Generator(device='cuda').manual_seed(1000 * rank + tokens + k)
            idx = torch.rand(tokens, experts, device='cuda', generator=gen).topk(k, dim=1).indices
            gates = torch.full((tokens, k), 1.0 / k, device='cuda')
            x = torch.randn(tokens, dim, device='cuda', dtype=torch.bfloat16, generator=gen)

            def dispatch():
                flat = idx.reshape(-1)
                order = torch.argsort(flat, stable=True)
                rows = x[order // k]
                counts = torch.bincount(flat, minlength=experts)
                recv_counts = torch.empty_like(counts)
                dist.all_to_all_single(recv_counts, counts)
                send = counts.view(world, local).sum(1).tolist()
                recv = recv_counts.view(world, local).sum(1).tolist()
                out = rows.new_empty(sum(recv), dim)
                dist.all_to_all_single(out, rows, recv, send)
                expert_of_row = torch.repeat_interleave(torch.arange(local, device='cuda').repeat(world), recv_counts.view(-1))
                perm = torch.argsort(expert_of_row, stable=True)
                return out[perm], (order, send, recv, perm)

            def combine(y, state):
                order, send, recv, perm = state
                back = torch.empty_like(y)
                back[perm] = y
                ret = y.new_empty(sum(send), dim)
                dist.all_to_all_single(ret, back, send, recv)
                slots = torch.empty_like(ret)
                slots[order] = ret
                return (slots.view(tokens, k, dim).float() * gates.unsqueeze(-1)).sum(1).to(torch.bfloat16)

            times = [[], []]
            for i in range(args.iters + 3):
                e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                e[0].record()
                y, state = dispatch()
                e[1].record()
                combine(y, state)
                e[2].record()
                torch.cuda.synchronize()
                if i >= 3:
                    times[0].append(e[0].elapsed_time(e[1]))
                    times[1].append(e[1].elapsed_time(e[2]))
            med = torch.tensor([sorted(t)[len(t) // 2] for t in times], device='cuda')
            dist.all_reduce(med, op=dist.ReduceOp.MAX)
            sent = torch.bincount(idx.reshape(-1) // local, minlength=world).float()
            sent[rank] = 0
            leaving = sent.sum() * 2  # dispatched to others, and as many returned to others on average
            dist.all_reduce(leaving)
            d, c = med.tolist()
            bytes_per_rank = leaving.item() / world * dim * 2
            results.append(dict(tokens=tokens, topK=k, dispatchMs=d, combineMs=c, roundTripMs=d + c,
                                bytesPerRank=bytes_per_rank, gbPerSecond=bytes_per_rank / ((d + c) * 1e6)))
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--nproc', type=int, default=4)
    p.add_argument('--tokens', default='4096,16384,32768')
    p.add_argument('--topk', default='6,8')
    p.add_argument('--dim', type=int, default=2048)
    p.add_argument('--experts', type=int, default=64)
    p.add_argument('--iters', type=int, default=20)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    procs = [ctx.Process(target=bench, args=(r, args.nproc, args, port, queue)) for r in range(args.nproc)]
    for pr in procs:
        pr.start()
    results = queue.get()
    for pr in procs:
        pr.join()
    print(f'PyTorch all_to_all_single (NCCL) on {torch.cuda.get_device_name(0)} x {args.nproc}, dim {args.dim} bf16, {args.experts} experts')
    print('tokens/rank  top-k  dispatch ms  combine ms  round trip ms  MB out/rank  GB/s/rank')
    for r in results:
        print(f"{r['tokens']:11d}  {r['topK']:5d}  {r['dispatchMs']:11.3f}  {r['combineMs']:10.3f}  {r['roundTripMs']:13.3f}  "
              f"{r['bytesPerRank'] / 1e6:11.1f}  {r['gbPerSecond']:9.1f}")
    print('JSON ' + json.dumps(results))


if __name__ == '__main__':
    main()
