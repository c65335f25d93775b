"""Iris classifier: a real model behind an endpoint, written to be copied.

Each worker fits a scikit-learn logistic regression on the iris data set, which ships with
scikit-learn (nothing is downloaded). Send one flower or several, in centimetres::

    {"SIGNATURE": "iris_classifier", "FEATURES": [5.1, 3.5, 1.4, 0.2]}
    {"SIGNATURE": "iris_classifier", "FEATURES": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}

The features are sepal length, sepal width, petal length and petal width. ``INPUT_SCHEMA``
says so to the server, which refuses a malformed input with 400 before ``_pre_process``;
``_pre_process`` still checks, for a server run without the schema (and for NaN-like values
a schema cannot see).

It batches: with ``"MAX_BATCH_SIZE": n`` in its config entry, ``_batch`` stacks the rows of
up to n waiting requests into one array, ``_predict`` classifies them in one call, and
``_unbatch`` hands each request its own rows back. Without it, ``_predict`` gets one request's
rows; the same ``_predict`` serves both.
"""

import math

import numpy as np

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bis_twisted import FlaskWorker

_CONFIG = {
    'C': 1.0,         # inverse regularisation strength of the logistic regression
    'MAX_ITER': 500,
}

# Checked by the model server before _pre_process: a request that breaks it gets 400 naming
# the field and the rule. Written as a literal, so the gateway's /openapi.json (and /docs)
# shows it without importing this file.
INPUT_SCHEMA = {
    'type': 'object',
    'description': 'one flower, or several, measured in centimetres',
    'properties': {
        'FEATURES': {
            'description': 'an array of 4 numbers (sepal length, sepal width, petal length, petal width, cm), '
                           'or a non-empty list of such arrays',
            'anyOf': [
                {'type': 'array', 'items': {'type': 'number'}, 'minItems': 4, 'maxItems': 4},
                {'type': 'array', 'minItems': 1,
                 'items': {'type': 'array', 'items': {'type': 'number'}, 'minItems': 4, 'maxItems': 4}},
            ],
        },
    },
    'required': ['FEATURES'],
    'examples': [
        {'FEATURES': [5.1, 3.5, 1.4, 0.2]},
        {'FEATURES': [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
    ],
}

# What predict_result holds; an answer that breaks it is a 500 (a bug in this file).
OUTPUT_SCHEMA = {
    'type': 'object',
    'properties': {
        'predictions': {'type': 'array', 'items': {
            'type': 'object',
            'properties': {
                'label': {'type': 'string', 'enum': ['setosa', 'versicolor', 'virginica']},
                'class_id': {'type': 'integer', 'minimum': 0, 'maximum': 2},
                'probabilities': {'type': 'object', 'additionalProperties': {'type': 'number'}},
            },
            'required': ['label', 'class_id', 'probabilities'],
        }},
        'model': {'type': 'string'},
        'train_accuracy': {'type': 'number'},
    },
    'required': ['predictions', 'model', 'train_accuracy'],
}

# The same input as a tensor of the Open Inference Protocol (POST /v2/models/iris_classifier/infer):
# rows of 4 features. Declared, it is what GET /v2/models/iris_classifier shows, and the gateway
# refuses another datatype or shape with 400; _pre_process gets a numpy array.
V2_INPUTS = [{'name': 'FEATURES', 'datatype': 'FP32', 'shape': [-1, 4]}]

FEATURES_HELP = ('send "FEATURES": [sepal_length, sepal_width, petal_length, petal_width] '
                 '(numbers, cm), or a list of such rows')


class IrisClassifierWorker(FlaskWorker):

    def _load_model(self):
        iris = load_iris()
        self.labels = [str(name) for name in iris.target_names]
        self.model = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=float(self.cfg_c), max_iter=int(self.cfg_max_iter)),
        )
        self.model.fit(iris.data, iris.target)
        self.train_accuracy = float(self.model.score(iris.data, iris.target))
        self.log.P('iris model fitted; train accuracy {:.3f}'.format(self.train_accuracy))

    def _pre_process(self, inputs):
        if 'FEATURES' not in inputs:
            raise ValueError('FEATURES is missing; ' + FEATURES_HELP)
        rows = inputs['FEATURES']
        if isinstance(rows, np.ndarray):  # a V2 tensor
            rows = rows.tolist()
        if not isinstance(rows, list) or not rows:
            raise ValueError('FEATURES must be a non-empty list, got {!r}; {}'.format(rows, FEATURES_HELP))
        if not isinstance(rows[0], list):
            rows = [rows]  # a single flower
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != 4:
                raise ValueError('FEATURES row {} must be a list of 4 numbers, got {!r}; {}'.format(
                    index, row, FEATURES_HELP))
            for value in row:
                # bool is an int in Python, but `true` is not a measurement
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError('FEATURES row {}: {!r} is not a finite number; {}'.format(
                        index, value, FEATURES_HELP))
        return np.asarray(rows, dtype=float)

    def _batch(self, prep_inputs_list):
        # _batch and _unbatch run in one call on this instance, so the split can wait on self
        self._rows_per_request = [len(rows) for rows in prep_inputs_list]
        return np.concatenate(prep_inputs_list)

    def _predict(self, prep_inputs):
        return self.model.predict_proba(prep_inputs)  # (rows, 3): one call for the whole batch

    def _unbatch(self, preds):
        return np.split(preds, np.cumsum(self._rows_per_request)[:-1])

    def _post_process(self, pred):
        probabilities = pred
        class_ids = probabilities.argmax(axis=1)
        predictions = [
            {
                'label': self.labels[class_id],
                'class_id': int(class_id),
                'probabilities': {label: round(float(p), 4) for label, p in zip(self.labels, row)},
            }
            for class_id, row in zip(class_ids, probabilities)
        ]
        return {
            'predictions': predictions,
            'model': 'LogisticRegression',
            'train_accuracy': round(self.train_accuracy, 4),
        }
