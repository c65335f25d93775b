"""End-to-end in a real browser: the status page at ``/`` of the real gateway
(``twistd -n -y bis.tac``, two model servers with one worker each), shown in headless Chromium
driven by selenium through the system's chromedriver.

What a user would see: a row per configured server, both online, with no error in the browser
console; the row of a child killed with SIGKILL goes offline and comes back online when the
supervisor has restarted it; the admin buttons appear only once a token is typed; each
endpoint's uPlot chart holds what ``/stats`` says of its ``/run`` traffic, with a legend and
values on hover; names link to notifications; nothing is fetched but from the gateway. Then
``/docs``: Swagger UI's "Try it out" runs an endpoint from its example. Screenshots go to
``docs/status-page.png`` and ``docs/docs-page.png`` (the README's) with BIS_SCREENSHOT=1.

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``);
selenium is pointed at them, so Selenium Manager never runs (nothing is downloaded). Without
them these tests fail: they are part of the suite, not optional.
"""

import collections
import os
import re
import tempfile
import signal
import threading

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.ui import WebDriverWait

from gateway_process import start_gateway
from procs import REPO_ROOT, Processes, process_gone, wait_until

pytestmark = pytest.mark.timeout(90)

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
INSTALL_HINT = 'apt-get install chromium chromium-driver'
CHROMIUM_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--no-first-run', '--no-proxy-server', '--window-size=1280,900')
# the README's picture is refreshed only on request (BIS_SCREENSHOT=1), so that a test run
# leaves the checkout clean
SCREENSHOT = (os.path.join(REPO_ROOT, 'docs', 'status-page.png') if os.environ.get('BIS_SCREENSHOT')
              else os.path.join(tempfile.gettempdir(), 'bis-status-page.png'))
DOCS_SCREENSHOT = (os.path.join(REPO_ROOT, 'docs', 'docs-page.png') if os.environ.get('BIS_SCREENSHOT')
                   else os.path.join(tempfile.gettempdir(), 'bis-docs-page.png'))

KILLED = 'dummy_model_demo2'
SERVERS = (KILLED, 'dummy_model_demo1')
DISABLED = 'dummy_model_demo2-bis'  # in STOPPED_SERVERS, not AVAIL_SERVERS: the page shows it too
ROWS = SERVERS + (DISABLED,)
INPUTS = {KILLED: {'INPUT_VALUE': 3}, 'dummy_model_demo1': {'INPUT_VALUE': 'hello', 'LANGUAGE': 'en'}}
CONFIG = {'DEFAULT_SERVER': KILLED, 'NO_STARTUP_WAIT': True, 'SERVER_NAME': 'status_page_demo',
          'CONFIG_ENDPOINTS': {
              KILLED: {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1,
                       'DESCRIPTION': 'demo2: INPUT_VALUE*2 + 1'},
              'dummy_model_demo1': {'NR_WORKERS': 1, 'HOST': '127.0.0.1',
                                    'DESCRIPTION': 'demo1: a placeholder model'},
              DISABLED: {'SERVER_CLASS': KILLED, 'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'DISABLED': True,
                         'DESCRIPTION': 'demo2, second server, disabled'}}}
TOKEN = 'tok-status-page-browser-e2e'
RPS_BLUE = (0x09, 0x69, 0xda)  # the page's colour of the requests/s line
P99_RED = (0xcf, 0x22, 0x2e)   # and of the p99 latency line


class Traffic(threading.Thread):
    """POSTs ``/run`` to each server in turn, a few dozen requests a second, until stopped,
    so that ``/stats`` (5-second windows) has points for the chart. Counts the statuses."""

    def __init__(self, gateway):
        super().__init__(name='status-page-traffic', daemon=True)
        self._gateway = gateway
        self._stopped = threading.Event()
        self.statuses = collections.Counter()

    def run(self):
        # the wait paces the requests and ends at once when the test is over
        while not self._stopped.wait(0.03):
            for name in SERVERS:
                try:
                    self.statuses[self._gateway.run(name, **INPUTS[name]).status] += 1
                except OSError as exc:  # only while the gateway goes away at the end
                    self.statuses[type(exc).__name__] += 1

    def stop(self):
        self._stopped.set()
        self.join(10)


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    with Processes() as group:
        gateway = start_gateway(group, tmp_path_factory.mktemp('status_page'), config=CONFIG,
                                env={'BIS_ADMIN_TOKEN': TOKEN})
        for name in SERVERS:
            gateway.wait_online(name, timeout=30)
        gateway.traffic = Traffic(gateway)
        gateway.traffic.start()
        try:
            yield gateway
        finally:
            gateway.traffic.stop()


@pytest.fixture(scope='module')
def browser_installed():
    """Fails (never skips) when Debian's Chromium or chromedriver is not installed."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER)
               if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if missing:
        pytest.fail('the status page tests need Debian\'s Chromium and chromedriver; missing {}. '
                    'Run `{}`'.format(', '.join(missing), INSTALL_HINT), pytrace=False)


@pytest.fixture(scope='module')
def browser(browser_installed, gateway, tmp_path_factory):
    """Headless Chromium on a fresh profile, showing the gateway's status page; quit at the end,
    and any of its processes still alive then are killed."""
    profile = tmp_path_factory.mktemp('chromium')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument('--user-data-dir={}'.format(profile / 'user-data'))
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    # an explicit driver path: selenium does not start Selenium Manager (no download, no network)
    service = Service(CHROMEDRIVER, log_output=str(profile / 'chromedriver.log'))
    driver = webdriver.Chrome(service=service, options=options)
    started = _descendants(service.process.pid)
    try:
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(10)
        driver.get(gateway.url('/'))
        yield driver
    finally:
        started += _descendants(service.process.pid)
        driver.quit()
        for proc in started:  # a browser process that outlived quit()
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def _descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- reading the page ----------------------------------------------------------------------------
def page_summary(driver):
    """What the page shows, for failure messages."""
    return driver.execute_script("""
        const rows = [...document.querySelectorAll('#servers tbody tr')].map(
            row => [...row.cells].map(cell => cell.textContent).join(' | '));
        return {refreshed: document.body.dataset.refreshed || null, rows: rows,
                problem: document.getElementById('problem').textContent};""")


def wait_for(driver, condition, what, timeout=20):
    """``condition(driver)`` once it is truthy; the page rebuilds its rows on every refresh, so
    an element that went stale counts as "not yet". Fails with what the page showed."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError('timed out after {}s waiting for {}; the page shows {!r}'.format(
            timeout, what, page_summary(driver))) from None


def state_cell(driver, name):
    return driver.find_element(By.CSS_SELECTOR, 'tr[data-server="{}"] td[data-online]'.format(name))


def online_flag(driver, name):
    """The row's ``data-online`` ("true"/"false"), None while the row is not there."""
    cells = driver.find_elements(By.CSS_SELECTOR, 'tr[data-server="{}"] td[data-online]'.format(name))
    return cells[0].get_attribute('data-online') if cells else None


def cell_text(driver, name, column):
    """The text of ``column`` (a header of the servers table) in the row of ``name``."""
    headers = [th.text for th in driver.find_elements(By.CSS_SELECTOR, '#servers thead th')]
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-server="{}"]'.format(name))
    return row.find_elements(By.TAG_NAME, 'td')[headers.index(column)].text


def refreshed(driver):
    return driver.execute_script('return document.body.dataset.refreshed || null')


def wait_next_refresh(driver):
    """Wait until the page shows a refresh whose fetches began after now (it polls every 2 s):
    one already under way may answer after now with what the gateway said before."""
    started = driver.execute_script('return refreshesStarted')
    return wait_for(driver, lambda d: d.execute_script(
        'return Number(document.body.dataset.shownRefresh || 0) > arguments[0]', started) and refreshed(d),
        'the next refresh of the page')


def console_errors(driver):
    """SEVERE entries of the browser console since the last call (reading clears it)."""
    return [entry for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']


def chart_pixels(driver, name, rgb):
    """How many opaque pixels of endpoint ``name``'s chart canvas are of colour ``rgb`` (give or take)."""
    return driver.execute_script("""
        const [name, r, g, b] = arguments;
        const canvas = document.querySelector('.chart[data-endpoint="' + name + '"] canvas');
        if (!canvas) return -1;
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 200 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40
              && Math.abs(data[i + 2] - b) < 40) count++;
        }
        return count;""", name, *rgb)


def charts_shown(driver):
    """Each uPlot chart of the page: its series' labels, whether each is shown, and its data."""
    return driver.execute_script("""
        const out = {};
        for (const [name, u] of Object.entries(window.charts || {})) {
          out[name] = {labels: u.series.map(s => s.label), shown: u.series.map(s => s.show), data: u.data,
                       x: [u.scales.x.min, u.scales.x.max]};
        }
        return out;""")


def legend_values(driver, name):
    """``{label: value}`` of endpoint ``name``'s chart legend (the values under the cursor)."""
    return driver.execute_script("""
        const box = document.querySelector('.chart[data-endpoint="' + arguments[0] + '"]');
        return Object.fromEntries([...box.querySelectorAll('.u-legend .u-series')].map(
            row => [row.querySelector('.u-label').textContent.trim(), row.querySelector('.u-value').textContent.trim()]));
        """, name)


# -- the tests -----------------------------------------------------------------------------------
def test_page_loads_without_console_errors_and_shows_each_server_online(browser, gateway):
    wait_for(browser, refreshed, 'the first refresh of the page')
    assert browser.title == 'bis_twisted status'
    for name in SERVERS:
        wait_for(browser, lambda d: online_flag(d, name) == 'true', '{} online on the page'.format(name))
        assert state_cell(browser, name).text == 'online'
    rows = [row.get_attribute('data-server')
            for row in browser.find_elements(By.CSS_SELECTOR, '#servers tbody tr')]
    assert rows == sorted(ROWS)  # one row per configured server, by name
    assert online_flag(browser, DISABLED) == 'false' and state_cell(browser, DISABLED).text == 'stopped'
    assert cell_text(browser, KILLED, 'workers') == '1'
    assert browser.find_element(By.ID, 'problem').text == ''
    assert 'status_page_demo' in browser.find_element(By.ID, 'meta').text
    assert console_errors(browser) == []


def test_admin_buttons_are_shown_only_once_a_token_is_typed(browser):
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, 'button.admin')) == 2 * len(ROWS),
             'a stop and a start button per server')
    buttons = browser.find_elements(By.CSS_SELECTOR, 'button.admin')
    assert not any(button.is_displayed() for button in buttons)
    assert not browser.find_element(By.CSS_SELECTOR, '#servers th.admin').is_displayed()

    browser.find_element(By.ID, 'token').send_keys(TOKEN)

    def all_shown(driver):
        buttons = driver.find_elements(By.CSS_SELECTOR, 'button.admin')
        return len(buttons) == 2 * len(ROWS) and all(button.is_displayed() for button in buttons)

    wait_for(browser, all_shown, 'the admin buttons shown after typing a token', timeout=5)
    assert browser.find_element(By.CSS_SELECTOR, '#servers th.admin').is_displayed()
    # the rows are rebuilt on every refresh: the buttons stay shown
    wait_next_refresh(browser)
    wait_for(browser, all_shown, 'the admin buttons still shown after a refresh', timeout=5)
    assert sorted(b.text for b in browser.find_elements(By.CSS_SELECTOR, 'button.admin')) == \
        ['start'] * len(ROWS) + ['stop'] * len(ROWS)
    assert console_errors(browser) == []


def test_gateway_not_answering_is_shown_then_cleared_when_it_answers_again(browser):
    # what the page sees while the gateway restarts: its requests fail at the network level
    browser.execute_script("""
        window.realFetch = window.fetch;
        window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));
        refresh();""")
    try:
        wait_for(browser, lambda d: 'gateway not answering' in d.find_element(By.ID, 'problem').text,
                 'the page to say the gateway is not answering', timeout=5)
    finally:
        browser.execute_script('window.fetch = window.realFetch;')
    wait_for(browser, lambda d: d.find_element(By.ID, 'problem').text == '',
             'the message gone once the gateway answers again', timeout=10)
    for name in SERVERS:
        assert online_flag(browser, name) == 'true'
    assert console_errors(browser) == []


def test_row_of_child_killed_with_sigkill_goes_offline_then_back_online(browser, gateway):
    wait_for(browser, lambda d: online_flag(d, KILLED) == 'true', '{} online first'.format(KILLED))
    before = gateway.server(KILLED)
    psutil.Process(before['PID']).send_signal(signal.SIGKILL)
    wait_until(lambda: process_gone(before['PID']), what='the killed child gone', timeout=10)
    # The supervisor restarts the child ~0.2 s + its start-up later, and the page polls every
    # 2 s: its timer may fall on either side of that gap. Ask for the refresh the timer would
    # make, now, while the child is certainly down.
    browser.execute_script('refresh()')
    wait_for(browser, lambda d: online_flag(d, KILLED) == 'false', '{} offline on the page'.format(KILLED),
             timeout=10)
    # a child loading again says for how long: "loading 0:00:01"
    state = state_cell(browser, KILLED).text
    assert state in ('restarting', 'not answering') or re.match(r'^loading \d+:\d\d:\d\d$', state), state
    assert online_flag(browser, 'dummy_model_demo1') == 'true'

    wait_for(browser, lambda d: online_flag(d, KILLED) == 'true',
             '{} back online on the page after the restart'.format(KILLED), timeout=30)
    assert state_cell(browser, KILLED).text == 'online'
    assert cell_text(browser, KILLED, 'restarts') == str(before['RESTARTS'] + 1)
    assert cell_text(browser, KILLED, 'last error') == 'killed by signal 9'
    assert gateway.server(KILLED)['PID'] != before['PID']
    assert console_errors(browser) == []


CHART_SERIES = ['time', 'requests/s', '4xx/s', '5xx/s', 'p50 ms', 'p99 ms']


def test_each_endpoint_has_a_uplot_chart_of_its_traffic_with_legend_and_hover_values(browser, gateway):
    # /stats closes a 5-second window at a time: three points per endpoint take 15 s from the
    # first request
    def enough(stats):
        return all(len(stats['ENDPOINTS'][name]) >= 3 and any(p['rps'] > 0 for p in stats['ENDPOINTS'][name])
                   for name in SERVERS)

    wait_until(lambda: gateway.get('/stats').json(), enough, timeout=30,
               what='/stats with three windows of /run traffic per endpoint')
    assert gateway.traffic.statuses[200] > 0, gateway.traffic.statuses
    wait_next_refresh(browser)  # one that fetched those points
    shown = charts_shown(browser)
    stats = gateway.get('/stats').json()  # windows already closed do not change
    assert sorted(shown) == sorted(SERVERS)
    for name in SERVERS:
        chart = shown[name]
        assert chart['labels'] == CHART_SERIES
        assert all(chart['shown']), chart['shown']
        times, rps, client_errors, errors, p50, p99 = chart['data']
        assert len(times) >= 3 and max(rps) > 0
        by_time = {p['t']: p for p in stats['ENDPOINTS'][name]}
        compared = 0
        for i, t in enumerate(times):
            if t in by_time:  # the chart holds what /stats said for that window, per endpoint
                point = by_time[t]
                assert (rps[i], p50[i], p99[i]) == (point['rps'], point['p50_ms'], point['p99_ms']), (name, t)
                assert errors[i] == point['errors'] / stats['WINDOW_SECONDS']
                assert client_errors[i] == point['client_errors'] / stats['WINDOW_SECONDS']
                compared += 1
        assert compared >= 3, (name, times, sorted(by_time))
        assert any(v is not None and v > 0 for v in p99)
        assert chart_pixels(browser, name, RPS_BLUE) > 50, 'no requests/s line on the chart of ' + name
        assert chart_pixels(browser, name, P99_RED) > 50, 'no p99 line on the chart of ' + name
    assert not browser.find_element(By.ID, 'charts-empty').is_displayed()
    # every chart covers one time range, and its legend shows the latest values before any hover
    assert len({tuple(chart['x']) for chart in shown.values()}) == 1, {n: c['x'] for n, c in shown.items()}
    for name in SERVERS:
        resting, last_rps = browser.execute_script('''
            const box = document.querySelector('.chart[data-endpoint="' + arguments[0] + '"]');
            const legend = Object.fromEntries([...box.querySelectorAll('.u-legend .u-series')].map(
                row => [row.querySelector('.u-label').textContent.trim(),
                        row.querySelector('.u-value').textContent.trim()]));
            return [legend, window.charts[arguments[0]].data[1].slice(-1)[0]];''', name)
        assert '–' not in resting.values() and '--' not in resting.values(), (name, resting)
        assert resting['requests/s'] == '{:.1f}'.format(last_rps)

    # hovering the plot shows that moment's values in the legend
    over = browser.find_element(By.CSS_SELECTOR, '.chart[data-endpoint="{}"] .u-over'.format(KILLED))
    ActionChains(browser).move_to_element_with_offset(over, over.size['width'] // 2 - 5, 0).perform()
    legend = wait_for(browser, lambda d: (lambda values: values if values.get('requests/s', '–') not in ('–', '--')
                                          else None)(legend_values(d, KILLED)),
                      'values in the legend under the cursor', timeout=5)
    assert sorted(legend) == sorted(CHART_SERIES)
    # the hovered window's values, as /stats has them
    hovered = [p for p in stats['ENDPOINTS'][KILLED] if '{:.1f}'.format(p['rps']) == legend['requests/s']]
    assert hovered, (legend, stats['ENDPOINTS'][KILLED])
    assert float(legend['p99 ms']) > 0
    assert console_errors(browser) == []


def test_server_names_link_to_their_notifications(browser, gateway):
    for name in SERVERS:
        link = wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-server="{}"] td a'.format(name)),
                        'the link in the row of ' + name)
        assert link.text == name
        href = link.get_attribute('href')
        assert href == gateway.url('/notifications?SIGNATURE=' + name)
        notes = gateway.get(href[len(gateway.url('')):])
        assert notes.status == 200 and 'GENERAL' in notes.json()


def test_the_page_fetches_nothing_but_from_the_gateway_and_a_screenshot_is_saved(browser, gateway):
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(url.endswith('/static/uplot/uPlot.iife.min.js') for url in resources), resources
    assert all(url.startswith(gateway.url('/')) for url in resources), resources
    assert gateway.get('/static/uplot/LICENSE').text.startswith('The MIT License')
    assert gateway.get('/static/uplot/../status.html').status == 404

    # the whole page in the picture: the window is the page's height plus the window's own frame
    content, viewport = browser.execute_script('return [document.body.scrollHeight, window.innerHeight]')
    frame = browser.get_window_size()['height'] - viewport
    browser.set_window_size(1280, content + frame)
    wait_next_refresh(browser)  # drawn at the new size
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    assert browser.save_screenshot(SCREENSHOT)
    with open(SCREENSHOT, 'rb') as fh:
        assert fh.read(8) == b'\x89PNG\r\n\x1a\n'


# -- /docs: Swagger UI, offline ---------------------------------------------------------------------
def test_docs_try_it_out_runs_an_endpoint_from_its_example(browser, gateway):
    browser.get(gateway.url('/docs'))
    run = wait_for(browser, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, '.opblock.opblock-post')
                                       if b.find_element(By.CSS_SELECTOR, '.opblock-summary-path').text == '/run'],
                   'POST /run in Swagger UI')[0]
    # the routes under their tags, and each endpoint's answer among the schemas
    tags = [h.get_attribute('data-tag') for h in browser.find_elements(By.CSS_SELECTOR, '.opblock-tag')]
    assert tags == ['run', 'status', 'admin'], tags
    browser.find_element(By.CSS_SELECTOR, '.models .models-control').click()
    models = wait_for(browser, lambda d: [m.get_attribute('data-name') for m in d.find_elements(
        By.CSS_SELECTOR, '.models .model-container')], 'the schemas, expanded')
    assert {'RunAnswer.' + name for name in ROWS} <= set(models), models
    run.find_element(By.CSS_SELECTOR, '.opblock-summary').click()
    wait_for(browser, lambda d: run.find_elements(By.CSS_SELECTOR, 'button.try-out__btn'), 'the "Try it out" button')
    run.find_element(By.CSS_SELECTOR, 'button.try-out__btn').click()
    select = Select(wait_for(browser, lambda d: run.find_element(By.CSS_SELECTOR, '.examples-select select'),
                             'the examples of /run'))
    # one per configured endpoint (a DISABLED one too: it can be started), from its INPUT_SCHEMA
    assert sorted(o.text for o in select.options) == sorted(ROWS)
    select.select_by_visible_text(KILLED)
    body = wait_for(browser, lambda d: (lambda t: t if '"INPUT_VALUE": 3' in t.get_attribute('value') else None)(
        run.find_element(By.CSS_SELECTOR, 'textarea.body-param__text')), 'the example in the body')
    assert '"SIGNATURE": "{}"'.format(KILLED) in body.get_attribute('value')
    run.find_element(By.CSS_SELECTOR, 'button.execute').click()
    status = wait_for(browser, lambda d: run.find_element(
        By.CSS_SELECTOR, '.live-responses-table .response .response-col_status'), 'the answer of Execute')
    assert status.text.strip().startswith('200'), status.text
    answer = run.find_element(By.CSS_SELECTOR, '.live-responses-table .response .response-col_description'
                              ).get_attribute('textContent')
    assert '3*2 + 1 = 7 PREDICTED' in answer, answer

    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(url.endswith('/docs/swagger-ui-bundle.js') for url in resources), resources
    assert all(url.startswith(gateway.url('/')) for url in resources), resources
    assert console_errors(browser) == []
    browser.execute_script('arguments[0].scrollIntoView()', run)
    browser.set_window_size(1280, 1400)
    assert browser.save_screenshot(DOCS_SCREENSHOT)


def test_a_pasted_api_key_runs_an_endpoint_of_a_gateway_with_api_keys(browser, gateway, tmp_path):
    from bis_twisted.gateway.apikeys import add_key

    keys_file = tmp_path / 'api_keys.json'
    key = add_key(str(keys_file), 'browser', endpoints=[KILLED])
    config = {'DEFAULT_SERVER': KILLED, 'API_KEYS': str(keys_file),
              'CONFIG_ENDPOINTS': {KILLED: {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}}}
    with Processes() as group:
        keyed = start_gateway(group, tmp_path, config=config, use_twistd=False)
        browser.get(keyed.url('/'))
        wait_for(browser, refreshed, 'the first refresh of the keyed gateway\'s page')
        browser.find_element(By.ID, 'try-signature').send_keys(KILLED)
        browser.find_element(By.ID, 'try-inputs').send_keys('{"INPUT_VALUE": 3}')
        answer = browser.find_element(By.ID, 'try-answer')
        browser.find_element(By.CSS_SELECTOR, '#try-run button').click()
        wait_for(browser, lambda d: answer.text.startswith('HTTP 401'), 'a 401 without a key')
        assert 'an API key is required' in answer.text
        browser.find_element(By.ID, 'apikey').send_keys(key)
        browser.find_element(By.CSS_SELECTOR, '#try-run button').click()
        wait_for(browser, lambda d: answer.text.startswith('HTTP 200'), 'a 200 with the key')
        assert '3*2 + 1 = 7 PREDICTED' in answer.text
    console_errors(browser)  # the 401 is in the console as a failed fetch: read it away
    browser.get(gateway.url('/'))


def test_an_endpoint_under_rollout_has_both_versions_on_one_chart(browser, gateway):
    admin = {'Authorization': 'Bearer ' + TOKEN}
    # no latency rule: a busy machine's few-ms p99 doubles now and then, and this is about the chart
    started = gateway.post('/rollout', {'SIGNATURE': KILLED, 'PERCENT': 50, 'ROLLBACK_ON': {'P99_RATIO': None}},
                           headers=admin, timeout=60)
    assert started.status == 200, started
    try:
        def both_versions(stats):
            versions = stats.get('ROLLOUTS', {}).get(KILLED, {}).get('VERSIONS', {})
            return all(any(p['rps'] > 0 for p in versions.get(v, [])) for v in ('stable', 'candidate'))

        wait_until(lambda: gateway.get('/stats').json(), both_versions, timeout=30,
                   what='/stats with a window of both versions\' requests')
        browser.get(gateway.url('/'))
        chart = wait_for(browser, lambda d: d.execute_script('''
            const u = (window.rolloutCharts || {})[arguments[0]];
            return u ? {labels: u.series.map(s => s.label), data: u.data,
                        title: u.root.parentNode.querySelector('h3').textContent} : null;''', KILLED),
                         'the rollout chart')
        assert chart['labels'][1:] == ['{} {}'.format(v, s) for v in ('stable', 'candidate')
                                       for s in ('requests/s', '5xx/s', 'p50 ms', 'p99 ms')]
        stable_rps, candidate_rps = chart['data'][1], chart['data'][5]
        assert any(stable_rps) and any(candidate_rps), chart['data']
        assert chart['title'] == KILLED + ' rollout: canary', chart
        assert 'canary 50' in state_cell(browser, KILLED).text, page_summary(browser)
        assert console_errors(browser) == []
    finally:
        gateway.post('/rollout', {'SIGNATURE': KILLED, 'ABORT': True}, headers=admin, timeout=60)
