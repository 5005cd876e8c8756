/** An error the emulator answers with, in OpenAI's `{error: {message, type, param, code}}` shape. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  /** The response body OpenAI sends. */
  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 404 for an id that does not exist. */
export function notFound(what: 'file' | 'batch', id: string): ApiError {
  const message = what === 'file' ? `No such File object: ${id}` : `No batch found with id '${id}'.`;
  return new ApiError(404, message, 'invalid_request_error', null, 'id');
}

/** 400 for a missing parameter. */
export function missingParameter(param: string): ApiError {
  return new ApiError(
    400,
    `Missing required parameter: '${param}'.`,
    'invalid_request_error',
    'missing_required_parameter',
    param,
  );
}
