from bis_twisted import FlaskWorker


class EchoWorker(FlaskWorker):
    """Trivial: answers its input. Measures the serving path, not a model."""

    def _pre_process(self, inputs):
        return inputs.get('INPUT_VALUE')

    def _predict(self, prep_inputs):
        return prep_inputs

    def _post_process(self, pred):
        return {'echo': pred}
