/**
 * Errors that reach an operator carry a stable code. Match on `code`, never on the message.
 * Every code here is listed in README.md ("Error codes"); a test keeps the two in step.
 */
export const ErrorCodes = {
  EDGEHOOK_CONFIG_INVALID: "the configuration file is invalid (exit 78)",
  EDGEHOOK_CONFIG_UNREADABLE: "the configuration file or a `*_file` it names cannot be read (exit 78)",
  EDGEHOOK_USAGE: "the command line is wrong (exit 64)",
  EDGEHOOK_DB_CORRUPT:
    "the outbox database is damaged: at start its readable rows are salvaged into a fresh file and the damaged one moved aside; while running /healthz fails until a restart does that",
  EDGEHOOK_DB_IO_ERROR:
    "reading or writing the outbox database failed with an I/O error while running; /healthz fails until a restart checks the file",
  EDGEHOOK_OUTBOX_FULL:
    "the outbox is full with `when_full: block`: new readings wait at their source until deliveries make room",
  EDGEHOOK_OUTBOX_DROPPED:
    "the outbox dropped deliveries (a limit, `max_age` expiry); logged as a count since the last report, at most once a minute",
  EDGEHOOK_DISK_FLOOR:
    "free disk space is under `outbox.min_free_disk`: new readings wait at their source until space returns",
  EDGEHOOK_READINGS_DROPPED:
    "a serial source dropped readings it could not hold while the outbox refused them; logged as a count since the last report",
  EDGEHOOK_DESTINATION_DISABLED: "a receiver answered 410 Gone; the destination is disabled until re-enabled",
  EDGEHOOK_CLOCK_UNSYNCED: "the system clock is not synchronised; signing is held back",
  EDGEHOOK_MQTT_SESSION_LOST:
    "the MQTT broker no longer had edgehook's persistent session; readings published while disconnected may be lost",
  EDGEHOOK_MQTT_BROKER_DROPPED:
    "the MQTT broker reported dropping messages (a full queue); readings for edgehook may be among them",
  EDGEHOOK_REQUEST_UNSENDABLE:
    "no request could be built for a webhook (its template or URL does not render for the event); the delivery is dead at once",
  EDGEHOOK_NOT_FOUND: "the delivery or destination named on the command line does not exist",
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class EdgehookError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "EdgehookError";
    this.code = code;
  }
}

/** sysexits.h codes used by the command line. */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 64,
  CONFIG: 78,
} as const;
