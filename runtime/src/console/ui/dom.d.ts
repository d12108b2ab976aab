// The console's page runs in a browser: its sources (and only they, in the runtime's own build) see the DOM.
/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
