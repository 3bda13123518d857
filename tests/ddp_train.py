"""Trains a small model with every attnkern kernel family for a few SGD steps, with DDP or in one
process, and saves each step's gradients and the final parameters (tests/test_ddp.py compares them).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_train.py OUT.pt   # gloo DDP
    python tests/ddp_train.py --single OUT.pt                                                  # one process

Both runs see the same global batch each step: with DDP, rank r takes its contiguous share of it, and
DDP averages the ranks' gradients of their mean losses — the gradient of the global batch's mean loss.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import attnkern.nn as ak

STEPS, GLOBAL_BATCH, CLASSES = 3, 8, 5


class Net(nn.Module):
    """Conv → SOCA → criss-cross attention → DRConv2d → SwinIR block → pooled linear classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.soca = ak.SOCA(32, reduction=4)
        self.criss_cross = ak.CrissCrossAttention(32, recurrence=2)
        self.drconv = ak.DRConv2d(32, 16, 3, region_num=4, padding=1)
        self.swin = ak.SwinTransformerBlock(16, (12, 12), num_heads=2, window_size=4, shift_size=2)
        self.head = nn.Linear(16, CLASSES)
        with torch.no_grad():
            self.criss_cross.gamma.fill_(0.5)  # 0 at init would cut its query/key gradients

    def forward(self, x):
        x = self.drconv(self.criss_cross(self.soca(F.relu(self.stem(x)))))
        B, C, H, W = x.shape
        tokens = self.swin(x.flatten(2).transpose(1, 2), (H, W))
        return self.head(tokens.mean(1))


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(GLOBAL_BATCH, 3, 12, 12, generator=g), torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--single", action="store_true", help="one process, no torch.distributed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = not args.single
    if distributed:
        dist.init_process_group("gloo")  # NCCL on GPUs: init_process_group("nccl"), model.cuda(local_rank)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    torch.manual_seed(args.seed)
    model = Net()
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    share = GLOBAL_BATCH // world
    gradients = []
    for x, y in batches(args.seed + 1):
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        gradients.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
        optimizer.step()
    if rank == 0:
        torch.save({"gradients": gradients, "parameters": {k: p.detach() for k, p in model.named_parameters()},
                    "world": world}, args.out)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
