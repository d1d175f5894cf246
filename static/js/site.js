/* h2serve demo: report which protocol delivered this page. No frameworks. */
(function () {
  'use strict';

  function ready() {
    var status = document.getElementById('js-status');
    var proto = performance.getEntriesByType('navigation')[0]?.nextHopProtocol || 'unknown';
    if (status) {
      status.textContent = 'JavaScript loaded over ' + proto;
    }
    document.body.classList.add('js-ready');
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', ready);
  } else {
    ready();
  }
})();
