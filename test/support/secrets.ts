/**
 * The webhook signing secret tests configure destinations with and verify against. It is
 * the example secret of the Standard Webhooks specification, so the reference vector in
 * test/unit/sign.test.ts uses it too. A test that needs a second or a wrong key makes its own.
 */
export const WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
