"""A streaming endpoint for the benchmark: yields NR_CHUNKS short chunks as fast as it can
(no per-chunk delay), so what is measured is the serving path, not the model."""

from bis_twisted import FlaskWorker


class TokenStreamWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return int(inputs.get('NR_CHUNKS', 1))

    def _predict(self, count):
        for index in range(count):
            yield index

    def _post_process(self, pred):
        return {'token': 'tok{}'.format(pred)}
