/** The delivery contract of test/support/broker-contract.ts, against nats-server -js as the nats:// destination. */
import { deliveryContract, NatsSink } from "../support/broker-contract.js";

deliveryContract(() => new NatsSink());
