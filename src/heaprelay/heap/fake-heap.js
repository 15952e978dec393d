/* The fake Heap's heap.js: behaves like Heap's loader for the calls a page makes, and records
   every call at the fake Heap (POST /js/record, read back with GET /_fake/browser).
   Served at /js/heap-{app_id}.js (classic) and /config/{app_id}/heap_config.js (heap.js 5). */
(function () {
  'use strict';
  var APP_ID = __APP_ID__;
  var w = window;
  var script = document.currentScript;
  var endpoint = new URL('../'.repeat(__DEPTH__) + 'js/record', script ? script.src : location.href).href;
  var page = Math.random().toString(36).slice(2);
  var seq = 0;
  var chain = Promise.resolve();
  var METHODS = ['addEventProperties', 'addUserProperties', 'clearEventProperties', 'identify',
    'resetIdentity', 'removeEventProperty', 'setEventProperties', 'track', 'unsetEventProperty',
    'init', 'startTracking', 'stopTracking', 'identifyHashed', 'getSessionId', 'getUserId',
    'getIdentity', 'addAccountProperties', 'addAdapter', 'addTransformer', 'addTransformerFn',
    'onReady', 'addPageviewProperties', 'removePageviewProperty', 'clearPageviewProperties',
    'trackPageview'];

  function post(record) {
    record.app_id = APP_ID;
    record.page = page;
    record.url = location.href;
    record.seq = seq++;
    var body = JSON.stringify(record);
    // One after the other, so that the fake receives them in the order they were made.
    chain = chain.then(function () {
      return fetch(endpoint, { method: 'POST', body: body, keepalive: true }).catch(function () {});
    });
  }

  var queue = w.heap;
  var heap = queue && typeof queue === 'object' ? queue : [];
  var queued = Array.isArray(queue) ? queue.slice() : [];
  if (Array.isArray(queue)) queue.length = 0;
  var identity = null;

  METHODS.forEach(function (name) {
    heap[name] = function () {
      var args = [].slice.call(arguments);
      post({ method: name, args: args });
      if (name === 'identify') identity = args[0] === undefined ? null : String(args[0]);
      if (name === 'resetIdentity') identity = null;
      if (name === 'getUserId' || name === 'getIdentity') return identity;
      if (name === 'onReady' && typeof args[0] === 'function') args[0]();
      return undefined;
    };
  });
  // The classic queue's entries: [method, ...args].
  heap.push = function (entry) {
    if (Array.isArray(entry) && typeof heap[entry[0]] === 'function') heap[entry[0]].apply(heap, entry.slice(1));
  };
  Object.defineProperty(heap, 'identity', { get: function () { return identity; }, configurable: true });
  heap.appid = heap.appid || APP_ID;
  heap.envId = heap.envId || APP_ID;
  heap.loaded = true;
  heap.version = { heapJsVersion: 'heaprelay-fake' };
  w.heap = heap;

  queued.forEach(function (entry) { heap.push(entry); });
  // heap.js 5's queue: {name, fn}, where fn calls the (now real) method.
  var ready = w.heapReadyCb;
  if (Array.isArray(ready)) {
    ready.splice(0).forEach(function (entry) { if (entry && typeof entry.fn === 'function') entry.fn(); });
    ready.push = function (entry) { if (entry && typeof entry.fn === 'function') entry.fn(); return 0; };
  }
})();
