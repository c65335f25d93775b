"""A vectorised numpy model with a fixed cost per call: each ``_predict`` runs one 1 ms-class
matrix product (what a weights pass or a device round trip costs however many rows come),
then scores the rows. With ``MAX_BATCH_SIZE`` n, n requests share that cost."""

import numpy as np

from bis_twisted import FlaskWorker

_CONFIG = {'FIXED_SIZE': 192, 'FEATURES': 8}


class MatmulWorker(FlaskWorker):

    def _load_model(self):
        rng = np.random.default_rng(0)
        size = int(self.cfg_fixed_size)
        self.fixed_a = rng.standard_normal((size, size))
        self.fixed_b = rng.standard_normal((size, size))
        self.weights = rng.standard_normal((int(self.cfg_features), 1))

    def _pre_process(self, inputs):
        row = np.asarray(inputs['X'], dtype=float)
        if row.shape != (self.weights.shape[0],):
            raise ValueError('X must be a list of {} numbers'.format(self.weights.shape[0]))
        return row

    def _batch(self, prep_inputs_list):
        return np.stack(prep_inputs_list)

    def _predict(self, prep_inputs):
        rows = prep_inputs if prep_inputs.ndim == 2 else prep_inputs[None, :]
        scale = float(np.tanh(self.fixed_a @ self.fixed_b).mean())  # the fixed cost of a call
        scores = (rows @ self.weights)[:, 0] + scale
        return scores if prep_inputs.ndim == 2 else scores[0]

    def _unbatch(self, preds):
        return list(preds)

    def _post_process(self, pred):
        return {'score': round(float(pred), 6)}
