#file: endpoints/text_streamer.py
"""A streaming endpoint: "generates" text word by word, with a small delay per word, and
sends each word as it is made (no model to download). Its ``_predict`` yields, so the
gateway answers NDJSON (one line per word) or, with ``Accept: text/event-stream``, SSE."""

import time

from bis_twisted import FlaskWorker

_CONFIG = {
  'WORD_DELAY': 0.05,   # seconds per word: what a real model spends per token
  'MAX_WORDS': 200,
}

INPUT_SCHEMA = {
  'type': 'object',
  'properties': {
    'PROMPT': {'type': 'string', 'description': 'the text to continue'},
    'NR_WORDS': {'type': 'integer', 'minimum': 1, 'description': 'how many words to generate (default 10)'},
  },
  'required': ['PROMPT'],
  'examples': [{'PROMPT': 'once upon a time', 'NR_WORDS': 8}],
}

_VOCABULARY = ('the', 'model', 'streams', 'each', 'word', 'as', 'soon', 'as', 'it', 'is', 'made',
               'and', 'the', 'client', 'reads', 'it', 'at', 'once')


class TextStreamerWorker(FlaskWorker):

  def _load_model(self):
    self.vocabulary = _VOCABULARY

  def _pre_process(self, inputs):
    prompt = inputs['PROMPT']
    nr_words = int(inputs.get('NR_WORDS', 10))
    if not 1 <= nr_words <= self.cfg_max_words:
      raise ValueError('NR_WORDS must be between 1 and {}, got {}'.format(self.cfg_max_words, nr_words))
    return prompt, nr_words

  def _predict(self, prep_inputs):
    prompt, nr_words = prep_inputs
    seed = sum(map(ord, prompt))
    try:
      for index in range(nr_words):
        time.sleep(self.cfg_word_delay)  # the model thinking about the next word
        yield index, self.vocabulary[(seed + index) % len(self.vocabulary)]
    finally:
      # runs on the last word, and also when the client went away mid-stream (GeneratorExit)
      self._create_notification(notif='log', msg='generation of {} words ended'.format(nr_words))

  def _post_process(self, pred):
    index, word = pred
    return {'index': index, 'word': word}
