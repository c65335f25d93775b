from bis_twisted import FlaskWorker


class CpuLightWorker(FlaskWorker):
    """CPU-light: a little arithmetic per request (about 50 us)."""

    def _pre_process(self, inputs):
        return int(inputs.get('INPUT_VALUE', 200))

    def _predict(self, n):
        return sum(i * i for i in range(n))

    def _post_process(self, pred):
        return {'sum_of_squares': pred}
