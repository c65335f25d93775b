"""KServe's own REST client (``kserve.InferenceRESTClient``, protocol v2) against a running
bis_twisted gateway serving the iris_classifier endpoint: ``python kserve_v2_client.py URL``.

Run from a venv of its own holding ``kserve`` (it pins psutil < 6, which the project's tests
outgrew), never the project's: ``python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip
install kserve``. Prints what the client read and exits non-zero if anything is off."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def session(base):
    client = InferenceRESTClient(RESTConfig(protocol='v2'))
    try:
        live = await client.is_server_live(base)
        ready = await client.is_server_ready(base)
        model_ready = await client.is_model_ready(base, 'iris_classifier')
        features = InferInput('FEATURES', [2, 4], 'FP32')
        features.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32),
                                     binary_data=False)
        response = await client.infer(base, InferRequest('iris_classifier', [features]), model_name='iris_classifier')
        return live, ready, model_ready, response
    finally:
        await client.close()


def main():
    live, ready, model_ready, response = asyncio.run(session(sys.argv[1]))
    outputs = {output.name: output for output in response.outputs}
    labels = [json.loads(text)['label'] for text in outputs['predictions'].data]
    accuracy = outputs['train_accuracy'].as_numpy()
    print('live {} ready {} model ready {}; labels {}; train_accuracy {} {}'.format(
        live, ready, model_ready, labels, accuracy.dtype, accuracy.tolist()))
    ok = live and ready and model_ready and labels == ['setosa', 'virginica'] and accuracy.dtype == np.float64
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
