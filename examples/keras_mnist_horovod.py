"""Keras + Horovod on MNIST, as the 2019 seed tutorial's `aicrun keras_mnist.py` ran it.

For GPU pools with TensorFlow and Horovod installed on the miners (not run in CI: Horovod's
last release does not build against current TensorFlow on these machines; see docs/commands.md, launchers).

    aic run examples/keras_mnist_horovod.py --launcher horovod --miners 2 --gpus 4 -- --epochs 12

Reads MNIST from $AIC_DATA_DIR/mnist.npz when it is there (upload it with
`aic data put mnist.npz mnist` and pass --data mnist), else lets Keras download it.
Rank 0 writes checkpoints to $AIC_OUTPUT_DIR and resumes from the newest one.
"""
import argparse
import glob
import os

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1.0)
    args = ap.parse_args()

    hvd.init()
    gpus = tf.config.experimental.list_physical_devices("GPU")
    for g in gpus:
        tf.config.experimental.set_memory_growth(g, True)
    if gpus:
        # aic gives each rank one GPU of its miner (CUDA_VISIBLE_DEVICES); index by local rank otherwise.
        tf.config.experimental.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")

    local = os.path.join(os.environ.get("AIC_DATA_DIR", ""), "mnist.npz")
    (x, y), (xt, yt) = tf.keras.datasets.mnist.load_data(path=local if os.path.exists(local) else "mnist.npz")
    x = x[..., None].astype("float32") / 255.0
    xt = xt[..., None].astype("float32") / 255.0
    # Each rank trains on its own shard.
    x, y = x[hvd.rank() :: hvd.size()], y[hvd.rank() :: hvd.size()]

    model = tf.keras.Sequential(
        [
            tf.keras.layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
            tf.keras.layers.Conv2D(64, 3, activation="relu"),
            tf.keras.layers.MaxPooling2D(),
            tf.keras.layers.Dropout(0.25),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dropout(0.5),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    out = os.environ.get("AIC_OUTPUT_DIR", "output")
    os.makedirs(out, exist_ok=True)
    start = 0
    ckpts = sorted(glob.glob(os.path.join(out, "checkpoint-*.keras")))
    if ckpts:
        start = int(ckpts[-1].rsplit("-", 1)[1].split(".")[0])
        model = tf.keras.models.load_model(ckpts[-1], compile=False)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.Adadelta(args.lr * hvd.size()))
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]
    if hvd.rank() == 0:
        callbacks.append(tf.keras.callbacks.ModelCheckpoint(os.path.join(out, "checkpoint-{epoch:03d}.keras")))
        callbacks.append(
            tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: print(f"AIC_PROGRESS {e + 1}/{args.epochs}", flush=True))
        )
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, initial_epoch=start, callbacks=callbacks, verbose=2 if hvd.rank() == 0 else 0)
    if hvd.rank() == 0:
        loss, acc = model.evaluate(xt, yt, verbose=0)
        print(f"test loss {loss:.4f} accuracy {acc:.4f}")
        np.save(os.path.join(out, "test_accuracy.npy"), acc)


if __name__ == "__main__":
    main()
