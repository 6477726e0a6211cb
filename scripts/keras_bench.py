#!/usr/bin/env python3
"""Keras 3 / TensorFlow-CPU training-speed benchmark, to compare with Burn (`fer-train bench`).

Measures the wall time of one training step (forward, sparse categorical cross-entropy from
logits, backward, Adam update) of three small 48x48x1 expression networks, and prints one line
per network: ms per step, images per second and parameter count.

OPTIONAL: not part of CI and not a dependency of the Rust workspace. Inputs are RANDOM (uniform
floats in [-1, 1] and uniform labels over 7 classes), so it measures speed only, never accuracy.

Install and run (made for a 2-core machine, hence 2 intra-op threads by default):
    pip install tensorflow-cpu==2.21.*        # brings Keras 3
    python3 scripts/keras_bench.py                         # all three networks
    python3 scripts/keras_bench.py --network v2 plain --steps 50
    python3 scripts/keras_bench.py --network anchor --xla  # XLA (jit_compile) on
"""
import argparse
import os
import time

# Must be set before TensorFlow is imported, or its C++ start-up chatter is already printed.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NETWORKS = ("anchor", "plain", "v2")
CLASSES = 7


def parse_args():
    p = argparse.ArgumentParser(
        description="Time Keras 3 training steps on random 48x48x1 inputs (optional, not CI).")
    p.add_argument("--network", nargs="+", choices=NETWORKS, default=list(NETWORKS),
                   help="network(s) to time (default: all three)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed steps first: tracing, graph building, allocations (default 5)")
    p.add_argument("--threads", type=int, default=2,
                   help="TensorFlow intra-op threads (default 2, as Burn gets); inter-op is 1")
    p.add_argument("--xla", action="store_true",
                   help="compile the train step with XLA (jit_compile)")
    p.add_argument("--seed", type=int, default=42, help="seed of the random inputs and weights")
    return p.parse_args()


def build(name, layers, keras):
    """Returns the uncompiled Keras model called `name`."""
    def conv_bn(x, width, act):  # bias is dropped because BatchNormalization has its own shift
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        return act(layers.BatchNormalization()(x))

    def separable_block(x, width):
        # v2's depthwise-separable block: depthwise 3x3 -> pointwise 1x1 -> BN -> ReLU.
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
        x = layers.Conv2D(width, 1, use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization()(x))

    inputs = keras.Input((48, 48, 1))
    x = inputs
    if name == "anchor":
        # Nine separable 3x3 convolutions in four groups; pooling after the first three groups
        # takes 48 -> 24 -> 12 -> 6, then a 1x1 conv to the classes and a global average = logits.
        groups = [[48, 48, 48], [96, 96, 96], [192, 192], [384]]
        for g, widths in enumerate(groups):
            for w in widths:
                x = layers.SeparableConv2D(w, 3, padding="same", use_bias=False)(x)
                x = layers.LeakyReLU(negative_slope=0.1)(layers.BatchNormalization()(x))
            if g < 3:
                x = layers.MaxPool2D(2)(x)
        x = layers.Conv2D(CLASSES, 1)(x)
        logits = layers.GlobalAveragePooling2D()(x)
    elif name == "plain":
        # The v1 network of `fer-train bench --backbone plain`, without the attention module and
        # without the triplet-center loss (cross-entropy only).
        for s, w in enumerate([16, 32, 96, 192]):
            x = conv_bn(conv_bn(x, w, layers.ReLU()), w, layers.ReLU())
            if s < 3:
                x = layers.MaxPool2D(2)(x)
        x = layers.Dense(128)(layers.GlobalAveragePooling2D()(x))
        logits = layers.Dense(CLASSES)(x)
    else:
        # v2 backbone. NOTE: the Burn v2 network also has the selective attention module; this
        # Keras version omits it, so it times the backbone and heads only.
        x = conv_bn(x, 32, layers.ReLU())  # stage 1: one plain conv at 48x48
        x = layers.MaxPool2D(2)(x)
        for s, w in enumerate([64, 128, 256]):  # stages 2-4
            x = separable_block(separable_block(x, w), w)
            if s < 2:
                x = layers.MaxPool2D(2)(x)
        x = layers.Dense(128)(layers.GlobalAveragePooling2D()(x))  # embedding
        logits = layers.Dense(CLASSES)(x)
    return keras.Model(inputs, logits, name=name)


def main():
    args = parse_args()
    import numpy as np
    import tensorflow as tf

    # Threading can only be set before TensorFlow runs its first op, so do it before any
    # tensor or layer exists; 1 inter-op thread keeps the comparison with Burn's 2 cores fair.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from keras import layers

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    # One random batch, made a tensor once so per-step numpy conversion is not timed.
    x = tf.constant(rng.uniform(-1.0, 1.0, (args.batch_size, 48, 48, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, CLASSES, args.batch_size).astype("int32"))

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {args.threads} intra-op "
          f"thread(s), XLA {'on' if args.xla else 'off'}, {args.warmup} warm-up + {args.steps} "
          f"timed steps")
    for name in args.network:
        model = build(name, layers, keras)
        # train_on_batch runs Keras 3's compiled (tf.function) train step; jit_compile only
        # when asked, since the default is what a user gets out of the box.
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=args.xla)
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
        # train_on_batch returns the loss as a host value, so each step has finished when it
        # returns and the wall clock covers the whole step.
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        ms = (time.perf_counter() - start) * 1000.0 / args.steps
        # count_params includes BatchNormalization's moving mean and variance (non-trainable).
        rate = args.batch_size * 1000.0 / ms
        print(f"{name}: {ms:.1f} ms per step of {args.batch_size} ({rate:.0f} images/s), "
              f"{model.count_params():,} parameters")
        keras.backend.clear_session()  # free the graph before building the next network


if __name__ == "__main__":
    main()
