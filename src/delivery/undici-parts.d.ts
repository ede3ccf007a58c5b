/**
 * Types for the two undici modules http-transport.ts imports one by one instead of the
 * package index. The index also loads fetch, WebSocket, EventSource, the cache and mock
 * layers and every other dispatcher, which the agent never uses and which stay resident
 * (about 3 MB of V8 heap, more RSS; issue 15). The Pool class and the request function are the
 * same objects the index re-exports; only their module paths have no types of their own.
 */
declare module "undici/lib/dispatcher/pool.js" {
  import { Pool } from "undici";
  export = Pool;
}

declare module "undici/lib/api/api-request.js" {
  import type { Dispatcher } from "undici";

  /** `dispatcher.request(options)`: the index adds it to Dispatcher.prototype; called here with `this` set. */
  function request(this: Dispatcher, options: Dispatcher.RequestOptions): Promise<Dispatcher.ResponseData>;
  export = request;
}
