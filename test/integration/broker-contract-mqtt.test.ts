/** The delivery contract of test/support/broker-contract.ts, against mosquitto as the mqtt:// destination. */
import { deliveryContract, MqttSink } from "../support/broker-contract.js";

deliveryContract(() => new MqttSink());
