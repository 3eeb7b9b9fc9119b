/**
 * Errors that become HTTP answers. Route code throws `HttpError` with the status and a one-line message that names
 * the parameter or file, the value and what would be accepted; app.ts turns it into `{error}` JSON.
 */
import type { ContentfulStatusCode } from 'hono/utils/http-status';

export class HttpError extends Error {
  override name = 'HttpError';

  constructor(
    readonly status: ContentfulStatusCode,
    message: string,
  ) {
    super(message);
  }
}

export const badRequest = (message: string): HttpError => new HttpError(400, message);
export const notFound = (message: string): HttpError => new HttpError(404, message);
