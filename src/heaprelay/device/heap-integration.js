/*! heaprelay Heap integration */
// Served by the relay as analytics-next's classic destination "Heap"
// (/next-integrations/integrations/heap/<version>/heap.dynamic.js.gz: heapDeps, heapLoader,
// heapIntegration) and as RudderStack v3's device-mode "Heap.io" (<destSDKBaseURL>/Heap.min.js:
// Heap_RS.Heap). No dependency, no request but Heap's own script, which it loads at most once a
// page: not when the page already has Heap (the classic snippet, the heap.js 5 loader, or a
// <script> of Heap's), not twice when both SDKs are on the page.
//
// Its calls on window.heap are specified in Python by heaprelay.transform.browser and checked
// against the same vectors (tests/data/device/cleaning.json): keep the two in step.
// Minified by scripts/build-device-js (ES2015).
((w, d) => {
  'use strict';
  const own = (o, k) => ({}).hasOwnProperty.call(o, k);
  const keys = Object.keys;
  const stringify = JSON.stringify;
  const isArray = Array.isArray;
  const isFunction = (v) => typeof v === 'function';
  const isObject = (v) => v !== null && typeof v === 'object' && !isArray(v);
  const object = (v) => (isObject(v) ? v : {});
  // Python's str.strip() white space (JavaScript's less U+FEFF, plus \x1c-\x1f and \x85), so
  // that both languages judge identities and event names alike.
  const strip = (s) => s.replace(/^(?:[^\S\ufeff]|[\x1c-\x1f\x85])+|(?:[^\S\ufeff]|[\x1c-\x1f\x85])+$/g, '');
  // Heap's web SDK: event names <= 255, property names < 512, values < 1024 characters.
  const EVENT_MAX = 255;
  const NAME_MAX = 511;
  const VALUE_MAX = 1023;
  // Cut to n UTF-16 units, never inside a surrogate pair.
  const cut = (s, n) => {
    if (s.length <= n) return s;
    const hi = s.charCodeAt(n - 1);
    const lo = s.charCodeAt(n);
    return s.slice(0, hi >= 0xd800 && hi < 0xdc00 && lo >= 0xdc00 && lo < 0xe000 ? n - 1 : n);
  };
  const text = (v) => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');

  // --- profile "heap": heaprelay.transform.profiles.heap, with the web SDK's limits ---------

  const JUNK = /^(|null|undefined|none|nan|-?infinity|0|\[object object\])$/;

  const findIdentity = (m) => {
    const traits = object(m.traits);
    const context = object(object(m.context).traits);
    for (const v of [m.userId, traits.userId, traits.id, context.userId, context.id]) {
      if (v === undefined || v === null) continue;
      const t = text(v);
      const stripped = strip(t);
      if (!stripped || (stripped.length <= 16 && JUNK.test(stripped.toLowerCase()))) continue;
      return t.length > 255 ? null : t; // too long: refused, never cut
    }
    return null;
  };

  const flatten = (obj, out, prefix) => {
    for (const k of keys(obj)) {
      const name = cut(prefix + k, NAME_MAX);
      const v = obj[k];
      if (typeof v === 'string') out[name] = cut(v, VALUE_MAX);
      // JSON integers beyond 2^53 (which a server reads exactly) are sent as their digits.
      else if (typeof v === 'number') {
        if (isFinite(v)) out[name] = Math.abs(v) > 2 ** 53 && Math.abs(v) < 1e21 ? String(v) : v;
      } else if (typeof v === 'boolean') out[name] = String(v);
      else if (isArray(v)) out[name] = cut(stringify(v), VALUE_MAX);
      else if (isObject(v)) flatten(v, out, name + '.');
    }
    delete out.idempotencyKey;
    return out;
  };

  const userProperties = (m) => {
    let traits = m.traits;
    if (!isObject(traits) || !keys(traits).length) {
      const c = object(m.context).traits;
      if (isObject(c)) traits = c;
    }
    const out = flatten(object(traits), {}, '');
    for (const k of keys(out)) {
      const low = k.toLowerCase();
      let to = null;
      if (low === 'id') for (to = '_' + k; own(out, to); ) to = '_' + to; // Heap refuses "id"
      else if (low === 'email' && k !== 'email' && !own(out, 'email')) to = 'email';
      if (to !== null) {
        out[to] = out[k];
        delete out[k];
      }
    }
    return out;
  };

  const heapCalls = (type, m) => {
    const calls = [];
    if (type === 'identify') {
      const identity = findIdentity(m);
      const props = userProperties(m);
      if (identity !== null) calls.push(['identify', identity]);
      if (keys(props).length) calls.push(['addUserProperties', props]);
    } else if (type === 'track') {
      const event = text(m.event);
      const p = m.properties;
      if (strip(event) && (p === undefined || p === null || isObject(p))) {
        calls.push(['track', cut(event, EVENT_MAX), flatten(object(p), {}, '')]);
      }
    }
    return calls;
  };

  // --- profile "segment": Segment's classic analytics.js-integration-heap ---------------------

  const classicFlatten = (obj, name, out) => {
    if (!keys(obj).length) out[name] = {};
    for (const k of keys(obj)) {
      const v = obj[k];
      const n = name + '.' + k;
      if (isArray(v)) out[n] = stringify(v);
      else if (isObject(v) && keys(v).length) classicFlatten(v, n, out);
      else out[n] = v;
    }
  };
  const classicClean = (obj) => {
    const out = {};
    for (const k of keys(obj)) {
      const v = obj[k];
      if (isArray(v)) out[k] = stringify(v);
      else if (isObject(v)) classicFlatten(v, k, out);
      else if (v !== null) out[k] = v;
    }
    return out;
  };

  const segmentCalls = (type, m) => {
    const userId = m.userId;
    if (type === 'identify') {
      const traits = object(isObject(m.traits) ? m.traits : object(m.context).traits);
      if (userId) traits.id = userId;
      // Segment's Identify#traits({email: '_email'}): the first trait named "email" once
      // obj-case normalises it, if truthy, else the userId if it looks like an address.
      const name = keys(traits).find((k) => k.replace(/[^a-zA-Z0-9.]+/g, '').toLowerCase() === 'email');
      let email = name === undefined ? undefined : traits[name];
      if (!email) email = typeof userId === 'string' && /.+@.+\..+/.test(userId) ? userId : undefined;
      if (email !== undefined) {
        traits._email = email;
        delete traits.email;
      }
      return [...(userId ? [['identify', userId]] : []), ['addUserProperties', classicClean(traits)]];
    }
    return type === 'track' && m.event ? [['track', m.event, classicClean(object(m.properties))]] : [];
  };

  // --- events: RudderStack's client-side event filtering, then the profile's calls ------------

  const filtered = (m, config) => {
    const mode = config.eventFilteringOption;
    const list = config[mode];
    if (m.type !== 'track' || !/^(white|black)listedEvents$/.test(mode) || !isArray(list)) return false;
    const name = typeof m.event === 'string' && m.event ? strip(m.event) : null;
    const listed = name !== null && list.some((item) => strip(text(object(item).eventName)) === name);
    return listed === (mode === 'blacklistedEvents');
  };

  const heap = (method, args) => {
    const h = w.heap;
    if (h && isFunction(h[method])) h[method](...args);
  };

  const send = (type, message, config) => {
    // What a server would receive: JSON values only (dates as ISO strings, no undefined).
    const m = JSON.parse(stringify([message]))[0];
    if (!isObject(m)) return;
    m.type = type;
    if (filtered(m, config)) return;
    for (const [method, ...args] of (config.profile === 'segment' ? segmentCalls : heapCalls)(type, m)) {
      heap(method, args);
    }
  };

  // --- loading Heap, once a page ---------------------------------------------------------------

  const heapOnPage = (url) => {
    const h = w.heap;
    if (w.heapReadyCb || (h && (h.appid || h.envId || h.loaded))) return true;
    return [...d.getElementsByTagName('script')].some(
      (s) => s.src && (s.src === url || /\/js\/heap-[^/?#]+\.js|\/heap_config\.js/.test(s.src))
    );
  };

  const load = (config) => {
    const state = (w.__heaprelay = w.__heaprelay || {});
    if (state.url !== undefined) return; // another copy of this integration did it
    const appId = String(config.appId || '');
    const url = config.scriptUrl || `https://cdn.heapanalytics.com/js/heap-${appId}.js`;
    state.url = heapOnPage(url) ? null : url;
    if (!state.url) return; // the page's own Heap is used as it is
    // Heap's classic snippet: calls wait in the window.heap array until heap.js drains it.
    const h = (w.heap = w.heap && isFunction(w.heap.push) ? w.heap : []);
    h.appid = appId;
    h.config = {};
    for (const name of ('addEventProperties addUserProperties clearEventProperties identify ' +
      'resetIdentity removeEventProperty setEventProperties track unsetEventProperty').split(' ')) {
      h[name] = (...args) => w.heap.push([name, ...args]);
    }
    const script = d.createElement('script');
    const first = d.getElementsByTagName('script')[0];
    // Blocked (CSP, 404, offline): nothing throws, the calls stay queued, and the SDK's own
    // delivery to the relay is untouched.
    script.async = true;
    script.src = url;
    if (first && first.parentNode) first.parentNode.insertBefore(script, first);
    else (d.head || d.documentElement).appendChild(script);
  };

  // Heap's methods are there (stubs or the real ones): the integration can take events.
  const ready = () => {
    const h = w.heap;
    return !!h && isFunction(h.track) && isFunction(h.identify) && isFunction(h.addUserProperties);
  };

  // --- analytics-next: a classic destination (an emitter with initialize, loaded, invoke) -------

  function Segment(settings) {
    this.s = settings || {};
    this.l = []; // listeners
  }
  Segment.prototype = {
    // analytics-next listens for "initialize" and "ready" only, and both are emitted by
    // initialize(): a listener runs then, or at once when initialize() has run.
    on(event, fn) {
      if (this.done) fn();
      else this.l.push(fn);
      return this;
    },
    initialize() {
      load(this.s);
      // analytics.reset() is not passed to destinations; the instance emits it.
      const analytics = this.analytics;
      if (analytics && isFunction(analytics.on)) analytics.on('reset', () => heap('resetIdentity', []));
      // Ready at once: calls made before Heap's script runs wait in its queue.
      this.done = true;
      for (const fn of this.l) fn();
    },
    loaded: ready,
    invoke(method, facade) {
      // facade.raw: the event as sent (profile heap, as the server sees it); facade.obj: with
      // ISO strings turned into dates, which Segment's classic integration cleans.
      const event = facade && (this.s.profile === 'segment' ? facade.obj : facade.raw || facade.obj);
      send(method, event || facade, this.s);
    },
  };
  Segment.prototype.once = Segment.prototype.on; // each event is emitted once

  // --- RudderStack JS SDK v3: window.Heap_RS.Heap ----------------------------------------------

  function Rudder(config) {
    this.s = config || {};
  }
  Rudder.prototype = {
    init() {
      load(this.s);
    },
    isLoaded: ready,
    isReady: ready,
    identify(e) {
      send('identify', e && e.message, this.s);
    },
    track(e) {
      send('track', e && e.message, this.s);
    },
  };

  w.heapDeps = [];
  w.heapLoader = () => {};
  w.heapIntegration = Segment;
  w.Heap_RS = { Heap: Rudder };
})(window, document);
