"""Real cluster parts for the tests: moto's S3 server standing in for a bucket, and a Ray cluster of
two nodes on this machine (Ray's own test utilities). No mocks: s3fs talks HTTP to moto, and
slimops joins the Ray cluster by its address as it would join any other.

The S3 settings travel as the standard AWS environment variables, which boto (under s3fs) reads,
and which Ray's workers inherit from the process that started the cluster.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def moto_s3():
    """A moto S3 server on a free port; yields its endpoint URL, with the AWS variables set to reach it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def new_bucket(prefix: str = "cache") -> str:
    """A fresh bucket on the running moto server; returns an s3:// URL under it."""
    import s3fs

    name = f"slimops-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/{prefix}"


@contextmanager
def ray_cluster(nodes: int = 2, cpus_per_node: int = 1):
    """A Ray cluster of `nodes` nodes on this machine; yields its address. The driver is not connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "object_store_memory": 150 * 2**20})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node, object_store_memory=150 * 2**20)
    try:
        yield cluster.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
