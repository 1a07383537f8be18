// matrix-js-sdk previews ("peeks into") a world-readable room it has not joined, for
// tests/integration/test_js_peek.py: GET /rooms/{roomId}/initialSync, then /events polls.
// Reports on stdout:
//   @@PEEKED <json>   the room's name and the bodies in its timeline
//   @@LIVE <body>     a message that arrived while peeking (sent after PEEKED)
// Exits 0 when done, non-zero on error or timeout.

import { env, runMain, say } from "./common.mjs";

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");
    const roomId = env("ROOM_ID");
    const expected = env("EXPECT_BODY");
    const client = sdk.createClient({
        baseUrl: env("HS_URL"),
        userId: env("USER_ID"),
        accessToken: env("ACCESS_TOKEN"),
        deviceId: env("DEVICE_ID"),
    });
    const room = await client.peekInRoom(roomId);
    const bodies = () =>
        room
            .getLiveTimeline()
            .getEvents()
            .filter((e) => e.getType() === "m.room.message")
            .map((e) => e.getContent().body);
    say(`PEEKED ${JSON.stringify({ name: room.name, bodies: bodies() })}`);
    const deadline = Date.now() + 20000;
    while (!bodies().includes(expected)) {
        if (Date.now() > deadline) throw new Error("the live message never arrived");
        await new Promise((r) => setTimeout(r, 100));
    }
    say(`LIVE ${expected}`);
    client.stopPeeking();
    client.stopClient();
}

runMain(main);
