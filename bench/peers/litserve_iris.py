"""LitServe serving the same iris model as ``endpoints/iris_classifier.py`` (same fit, same
answer), batched: ``python litserve_iris.py PORT MAX_BATCH_SIZE BATCH_TIMEOUT WORKERS``.
Run by ``bench/run_bench.py --peers`` from its own venv (bench/.peers-venv), never the project's."""

import sys

import litserve as ls
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


class IrisAPI(ls.LitAPI):
    def setup(self, device):
        iris = load_iris()
        self.labels = [str(name) for name in iris.target_names]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
        self.model.fit(iris.data, iris.target)

    def decode_request(self, request):
        rows = request['FEATURES']
        if not isinstance(rows[0], list):
            rows = [rows]
        return np.asarray(rows, dtype=float)

    def batch(self, inputs):
        self._rows_per_request = [len(rows) for rows in inputs]
        return np.concatenate(inputs)

    def predict(self, x):
        return self.model.predict_proba(x)

    def unbatch(self, output):
        return np.split(output, np.cumsum(self._rows_per_request)[:-1])

    def encode_response(self, output):
        return {'predict_result': {'predictions': [
            {'label': self.labels[int(row.argmax())], 'class_id': int(row.argmax()),
             'probabilities': {label: round(float(p), 4) for label, p in zip(self.labels, row)}}
            for row in output]}}


if __name__ == '__main__':
    port, max_batch_size, batch_timeout, workers = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    api = IrisAPI(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator='cpu', workers_per_device=workers, timeout=30)
    server.run(port=port, host='127.0.0.1', generate_client_file=False)
