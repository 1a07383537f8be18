// matrix-js-sdk's delayed events API (MSC4140, as Element Call uses it), for
// tests/integration/test_delayed_events.py. Reports on stdout:
//   @@RESULT <json>   what each step gave
// Exits 0 when done, non-zero on error.

import { env, runMain, say } from "./common.mjs";

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");
    const roomId = env("ROOM_ID");
    const userId = env("USER_ID");
    const client = sdk.createClient({
        baseUrl: env("HS_URL"),
        userId,
        accessToken: env("ACCESS_TOKEN"),
        deviceId: env("DEVICE_ID"),
    });
    const result = {};
    const message = await client._unstable_sendDelayedEvent(roomId, { delay: 60000 }, null, "m.room.message", {
        msgtype: "m.text",
        body: "from js, delayed",
    });
    const stateKey = `_${userId}_${env("DEVICE_ID")}`;
    const state = await client._unstable_sendDelayedStateEvent(
        roomId,
        { delay: 60000 },
        "org.matrix.msc3401.call.member",
        {},
        stateKey,
    );
    result.scheduled = (await client._unstable_getDelayedEvents()).delayed_events.map((e) => e.type).sort();
    await client._unstable_restartScheduledDelayedEvent(state.delay_id);
    await client._unstable_sendScheduledDelayedEvent(message.delay_id);
    await client._unstable_cancelScheduledDelayedEvent(state.delay_id);
    result.left = (await client._unstable_getDelayedEvents()).delayed_events.length;
    const page = await client.createMessagesRequest(roomId, null, 20, "b");
    result.bodies = page.chunk.filter((e) => e.type === "m.room.message").map((e) => e.content.body);
    say(`RESULT ${JSON.stringify(result)}`);
}

runMain(main);
