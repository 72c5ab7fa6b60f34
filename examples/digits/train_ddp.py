"""Data-parallel training of train.py's MLP with PyTorch DistributedDataParallel (gloo, so it
runs on CPUs as well as GPUs): every rank holds the same model, trains on its shard of each
batch, and DDP averages the gradients, so all ranks take the same step. Rank 0 writes the
checkpoint in train.py's format (model.npz, which examples/digits/serve/app.py serves); a
restarted job resumes from it (DDP copies rank 0's parameters to every rank at start).

Run by aic's `torchrun` launcher (c10d rendezvous at the leading allocation):
    aic run examples/digits --entrypoint train_ddp.py --launcher torchrun --miners 2 --data digits -- --epochs 20
"""
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from train import KEYS, arguments, checkpoint, digest, end_of_epoch, finish, folders, init, load, split


class MLP(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        for k in KEYS:
            setattr(self, k, torch.nn.Parameter(torch.tensor(params[k])))

    def forward(self, x):
        h = torch.relu(x @ self.w1 + self.b1)
        return h @ self.w2 + self.b2

    def numpy(self):
        return {k: getattr(self, k).detach().numpy().copy() for k in KEYS}


def main():
    args = arguments(batch=64, batch_help="global batch, split over the ranks")
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun
    rank, size = dist.get_rank(), dist.get_world_size()
    data_dir, out_dir, ckpt = folders()

    x, y = load(data_dir)
    xtr, ytr, xte, yte = split(x, y, args.seed)
    params, start = init(args.hidden, args.seed), 0
    state = checkpoint(ckpt) if rank == 0 else None
    if state is not None:
        params, start = state
        print(f"resuming from checkpoint at epoch {start}")
    box = [start]
    dist.broadcast_object_list(box, src=0)
    start = box[0]
    model = DistributedDataParallel(MLP(params))  # broadcasts rank 0's parameters
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    if rank == 0:
        print(f"{size} ranks (DDP, gloo); training on {len(ytr)} images, testing on {len(yte)}; epochs {start + 1}..{args.epochs}")

    xt, yt = torch.tensor(xtr), torch.tensor(ytr)
    rng = np.random.default_rng(args.seed + start)  # same order on every rank
    t0 = time.time()
    for epoch in range(start + 1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        losses = []
        for batch in np.array_split(order, max(1, len(ytr) // args.batch)):
            mine = torch.tensor(np.array_split(batch, size)[rank])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[mine]), yt[mine])
            loss.backward()  # DDP averages the gradients over the ranks here
            opt.step()
            losses.append(loss.item())
        if rank == 0:
            end_of_epoch(model.module.numpy(), epoch, args.epochs, losses, xte, yte, ckpt)
        time.sleep(args.sleep)
    final = model.module.numpy()
    print(f"rank {rank} params {digest(final)}", flush=True)
    if rank == 0:
        finish(final, xte, yte, out_dir, ckpt, epochs=args.epochs, ranks=size, seconds=time.time() - t0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
