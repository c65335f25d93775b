"""End-to-end in a real browser: the status page at ``/`` of the real gateway
(``twistd -n -y bis.tac``, two model servers with one worker each), shown in headless Chromium
driven by selenium through the system's chromedriver.

What a user would see: a row per configured server, both online, with no error in the browser
console; the row of a child killed with SIGKILL goes offline and comes back online when the
supervisor has restarted it; the admin buttons appear only once a token is typed; the chart
draws the ``/run`` traffic. The last test saves a screenshot (``docs/status-page.png``, the README's, with BIS_SCREENSHOT=1).

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``);
selenium is pointed at them, so Selenium Manager never runs (nothing is downloaded). Without
them these tests fail: they are part of the suite, not optional.
"""

import collections
import os
import tempfile
import signal
import threading

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
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
    """Wait until the page has refreshed once more after now (it polls every 2 s)."""
    driver.execute_script('delete document.body.dataset.refreshed')
    return wait_for(driver, refreshed, 'the next refresh of the page')


def console_errors(driver):
    """SEVERE entries of the browser console since the last call (reading clears it)."""
    return [entry for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']


def chart_pixels(driver, rgb):
    """How many opaque pixels of the chart's canvas are of colour ``rgb`` (give or take)."""
    return driver.execute_script("""
        const [r, g, b] = arguments;
        const canvas = document.getElementById('chart');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let count = 0;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] > 200 && Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40
              && Math.abs(data[i + 2] - b) < 40) count++;
        }
        return count;""", *rgb)


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
    assert state_cell(browser, KILLED).text in ('restarting', 'starting', 'not answering')
    assert online_flag(browser, 'dummy_model_demo1') == 'true'

    wait_for(browser, lambda d: online_flag(d, KILLED) == 'true',
             '{} back online on the page after the restart'.format(KILLED), timeout=30)
    assert state_cell(browser, KILLED).text == 'online'
    assert cell_text(browser, KILLED, 'restarts') == str(before['RESTARTS'] + 1)
    assert cell_text(browser, KILLED, 'last error') == 'killed by signal 9'
    assert gateway.server(KILLED)['PID'] != before['PID']
    assert console_errors(browser) == []


def test_chart_draws_the_run_traffic_and_a_screenshot_is_saved(browser, gateway):
    # /stats closes a 5-second window at a time: three points (a line worth a picture) take
    # 15 s from the first request
    points = wait_until(lambda: gateway.get('/stats').json()['POINTS'],
                        lambda p: len(p) >= 3 and any(point['rps'] > 0 for point in p),
                        timeout=30, what='/stats with three windows of /run traffic')
    assert points[-1]['p99_ms'] is not None
    assert gateway.traffic.statuses[200] > 0, gateway.traffic.statuses
    wait_next_refresh(browser)  # one that fetched those points

    assert chart_pixels(browser, RPS_BLUE) > 100, 'no requests/s line on the chart'
    assert chart_pixels(browser, P99_RED) > 100, 'no p99 line on the chart'
    assert 'no requests yet' not in browser.execute_script('return document.body.innerText')
    assert console_errors(browser) == []

    # the whole page in the picture: the window is the page's height plus the window's own frame
    content, viewport = browser.execute_script('return [document.body.scrollHeight, window.innerHeight]')
    frame = browser.get_window_size()['height'] - viewport
    browser.set_window_size(1280, content + frame)
    wait_next_refresh(browser)  # drawn at the new size
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    assert browser.save_screenshot(SCREENSHOT)
    with open(SCREENSHOT, 'rb') as fh:
        assert fh.read(8) == b'\x89PNG\r\n\x1a\n'
