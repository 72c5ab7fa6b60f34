"""Data-parallel training of train.py's MLP with Horovod (PyTorch, Gloo controller), as the
seed tutorial's `aicrun` ran Horovod jobs: horovodrun starts one process per GPU slot of
every miner; gradients are averaged with Horovod's allreduce; rank 0 writes the checkpoint
in train.py's format and a restarted job resumes from it.

    aic run examples/digits --entrypoint train_horovod.py --launcher horovod --miners 2 --data digits -- --epochs 20

Horovod 0.28.1 must be built against torch on the miners (see examples/install_horovod.sh).
"""
import time

import horovod.torch as hvd
import numpy as np
import torch

from train import arguments, checkpoint, digest, end_of_epoch, finish, folders, init, load, split
from train_ddp import MLP


def main():
    args = arguments(batch=64, batch_help="global batch, split over the ranks")
    torch.set_default_dtype(torch.float64)
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    data_dir, out_dir, ckpt = folders()

    x, y = load(data_dir)
    xtr, ytr, xte, yte = split(x, y, args.seed)
    params, start = init(args.hidden, args.seed), 0
    state = checkpoint(ckpt) if rank == 0 else None
    if state is not None:
        params, start = state
        print(f"resuming from checkpoint at epoch {start}")
    start = hvd.broadcast_object(start, root_rank=0)
    model = MLP(params)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=args.lr), named_parameters=model.named_parameters())
    if rank == 0:
        print(f"{size} ranks (Horovod, gloo); training on {len(ytr)} images, testing on {len(yte)}; epochs {start + 1}..{args.epochs}")

    xt, yt = torch.tensor(xtr), torch.tensor(ytr)
    rng = np.random.default_rng(args.seed + start)
    t0 = time.time()
    for epoch in range(start + 1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        losses = []
        for batch in np.array_split(order, max(1, len(ytr) // args.batch)):
            mine = torch.tensor(np.array_split(batch, size)[rank])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[mine]), yt[mine])
            loss.backward()
            opt.step()  # Horovod averages the gradients over the ranks
            losses.append(loss.item())
        if rank == 0:
            end_of_epoch(model.numpy(), epoch, args.epochs, losses, xte, yte, ckpt)
        time.sleep(args.sleep)
    final = model.numpy()
    print(f"rank {rank} params {digest(final)}", flush=True)
    if rank == 0:
        finish(final, xte, yte, out_dir, ckpt, epochs=args.epochs, ranks=size, seconds=time.time() - t0)


if __name__ == "__main__":
    main()
