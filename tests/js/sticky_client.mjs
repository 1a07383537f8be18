// matrix-js-sdk and sticky events (MSC4354), for tests/integration/test_sticky_js.py.
//
// Alice sends a sticky event (`_unstable_sendStickyEvent`) and joins a MatrixRTC session
// with sticky memberships (`unstableSendStickyEvents`), then sends many ordinary messages.
// Bob (/sync v3, a short timeline) and Carol (sliding sync, MSC4186 + the MSC4480 sticky
// events extension) start afterwards: their first sync's timeline no longer reaches those
// events, so they know them only through the sticky section / extension. Then Alice sends an
// RTC decline (`sendRtcDecline`, sticky; from a client without an event scheduler, see
// below) while they sync, and leaves the session.
// Reports on stdout:
//   @@RESULT <json>   what each client saw
// Exits 0 when done, non-zero on error.

import { env, runMain, say, until } from "./common.mjs";

const MEMBER = "org.matrix.msc4143.rtc.member";
const DECLINE = "org.matrix.msc4310.rtc.decline";
const MESSAGES = Number(process.env.MESSAGES || 35);

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    const { SlidingSync } = await import("matrix-js-sdk/lib/sliding-sync.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");
    const roomId = env("ROOM_ID");
    const baseUrl = env("HS_URL");
    const make = (who) =>
        sdk.createClient({
            baseUrl,
            userId: env(`${who}_USER_ID`),
            accessToken: env(`${who}_ACCESS_TOKEN`),
            deviceId: env(`${who}_DEVICE_ID`),
        });
    const start = async (client, options) => {
        const ready = Promise.withResolvers();
        client.on(sdk.ClientEvent.Sync, (state) => {
            if (state === "PREPARED" || state === "SYNCING") ready.resolve();
            if (state === "ERROR") ready.reject(new Error("sync failed"));
        });
        // Short long-polls: the test server waits for open requests when it shuts down.
        await client.startClient({ pollTimeout: 2000, ...options });
        await ready.promise;
    };
    const result = {};

    const alice = make("ALICE");
    await start(alice, { initialSyncLimit: 5 });
    await until("alice's room", () => alice.getRoom(roomId));
    const sticky = await alice._unstable_sendStickyEvent(roomId, 600000, null, MEMBER, {
        msc4354_sticky_key: "DEV1",
        note: "plain sticky event",
    });
    result.sticky_event_id = sticky.event_id;

    // A MatrixRTC session whose memberships are sticky events (no LiveKit needed to join:
    // the transport is only advertised).
    const session = alice.matrixRTC.getRoomSession(alice.getRoom(roomId));
    const transport = { type: "livekit", livekit_service_url: "https://livekit.invalid", livekit_alias: roomId };
    session.joinRTCSession(
        { userId: alice.getUserId(), deviceId: alice.getDeviceId(), memberId: `${alice.getUserId()}:DEVRTC` },
        [transport],
        transport,
        { unstableSendStickyEvents: true },
    );
    await until("alice's own membership", () => session.memberships.some((m) => m.userId === alice.getUserId()));
    result.alice_rtc_joined = session.isJoined();

    for (let i = 0; i < MESSAGES; i++) await alice.sendTextMessage(roomId, `filler ${i}`);

    // Bob on /sync v3 with a 5-event timeline, Carol on sliding sync with a 2-event one.
    const bob = make("BOB");
    await start(bob, { initialSyncLimit: 5 });
    const carol = make("CAROL");
    const lists = new Map([["all", { ranges: [[0, 10]], timeline_limit: 2, required_state: [["*", "*"]] }]]);
    const roomSub = { timeline_limit: 2, required_state: [["*", "*"]] };
    await start(carol, { slidingSync: new SlidingSync(baseUrl, lists, roomSub, carol, 2000) });

    const seen = async (client) => {
        await until(`${client.getUserId()}'s room`, () => client.getRoom(roomId));
        const room = client.getRoom(roomId);
        await until(`${client.getUserId()}'s sticky event`, () =>
            [...room._unstable_getStickyEvents()].some((e) => e.getId() === sticky.event_id),
        );
        const rtc = client.matrixRTC.getRoomSession(room);
        await until(`${client.getUserId()}'s view of the RTC session`, () =>
            rtc.memberships.some((m) => m.userId === alice.getUserId()),
        );
        const now = Date.now();
        return {
            sticky: [...room._unstable_getStickyEvents()].map((e) => ({
                event_id: e.getId(),
                type: e.getType(),
                key: e.getContent().msc4354_sticky_key ?? null,
                expires_in: e.unstableStickyExpiresAt - now,
            })),
            in_timeline: room
                .getLiveTimeline()
                .getEvents()
                .some((e) => e.getId() === sticky.event_id),
            timeline_length: room.getLiveTimeline().getEvents().length,
            rtc_members: rtc.memberships.map((m) => m.userId),
        };
    };
    result.bob = await seen(bob);
    result.carol = await seen(carol);

    // A decline goes out as a sticky event. js-sdk 43 loses the sticky parameter when its
    // event scheduler queues the event (createClient's default scheduler queues any event
    // with a relation, and a decline always has one): that one is recorded, not asserted.
    const queued = await alice.sendRtcDecline(roomId, sticky.event_id);
    result.scheduled_decline_sticky = "msc4354_sticky" in (await alice.fetchRoomEvent(roomId, queued.event_id));
    const direct = new sdk.MatrixClient({
        baseUrl,
        userId: env("ALICE_USER_ID"),
        accessToken: env("ALICE_ACCESS_TOKEN"),
        deviceId: env("ALICE_DEVICE_ID"),
    });
    const decline = await direct.sendRtcDecline(roomId, sticky.event_id);
    result.decline_event_id = decline.event_id;
    for (const [name, client] of [
        ["bob", bob],
        ["carol", carol],
    ]) {
        const room = client.getRoom(roomId);
        await until(`${name}'s decline`, () =>
            [...room._unstable_getStickyEvents()].some((e) => e.getId() === decline.event_id && e.getType() === DECLINE),
        );
        result[`${name}_got_decline`] = true;
    }

    // Leaving the session: the others' sessions lose Alice.
    result.left = await session.leaveRoomSession(10000);
    for (const [name, client] of [
        ["bob", bob],
        ["carol", carol],
    ]) {
        const rtc = client.matrixRTC.getRoomSession(client.getRoom(roomId));
        await until(`${name} sees alice leave`, () => !rtc.memberships.some((m) => m.userId === alice.getUserId()));
        result[`${name}_saw_leave`] = true;
    }
    for (const client of [alice, bob, carol]) client.stopClient();
    say(`RESULT ${JSON.stringify(result)}`);
}

runMain(main);
