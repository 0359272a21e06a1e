-- The vst wire protocol (docs/protocol.md) for LuaJIT: libzmq through `ffi`, a DEALER socket,
-- msgpack headers (vst_msgpack.lua), request ids, heartbeats and bounded waits.
--
--   local wire = require("vst_wire")
--   local zmq = wire.load_libzmq(candidates)      -- the libzmq shared library, or an error
--   local client = wire.Client(zmq, "tcp://127.0.0.1:5555")
--   local reply = client:call("hello", {client = "fuse"}, nil, {timeout = 3})
--   local reply = client:call("stylize", fields, planes, {timeout = 10, abort = function() ... end})
--
-- Errors are raised as tables {code = ..., message = ...}: `code` is the server's protocol error code,
-- or "unavailable" (no sign of life within the timeout), "aborted" (the host asked to stop),
-- "libzmq" (the library or a socket call failed) or "protocol" (a reply this client cannot read).
-- A client whose request failed for any reason but a server error should be closed and replaced:
-- late replies to abandoned requests would otherwise stay queued.

local ffi = require("ffi")
local msgpack = require("vst_msgpack")

local M = {}

M.PROTOCOL_VERSION = 1
M.ERROR_CODES = { -- the server's error codes (docs/protocol.md), as a set
  bad_request = true, version = true, unknown_op = true, too_large = true, bad_frame = true, bad_exr = true,
  unknown_model = true, unsafe_model = true, bad_param = true, model_error = true, shutting_down = true,
  busy = true, abandoned = true, internal = true,
}
M.DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
M.HEARTBEAT = 1.0 -- seconds of silence before a ping while a request is in flight
M.MAX_WAIT = 600.0 -- seconds: the longest a live server may take over one request

ffi.cdef([[
typedef struct vst_zmq_msg_t { void *_align; unsigned char _[56]; } vst_zmq_msg_t;
void zmq_version(int *major, int *minor, int *patch);
int zmq_errno(void);
const char *zmq_strerror(int errnum);
void *zmq_ctx_new(void);
int zmq_ctx_term(void *context);
void *zmq_socket(void *context, int type);
int zmq_close(void *socket);
int zmq_setsockopt(void *socket, int option, const void *value, size_t length);
int zmq_getsockopt(void *socket, int option, void *value, size_t *length);
int zmq_connect(void *socket, const char *endpoint);
int zmq_send(void *socket, const void *buffer, size_t length, int flags);
int zmq_msg_init(vst_zmq_msg_t *msg);
int zmq_msg_recv(vst_zmq_msg_t *msg, void *socket, int flags);
int zmq_msg_close(vst_zmq_msg_t *msg);
void *zmq_msg_data(vst_zmq_msg_t *msg);
size_t zmq_msg_size(const vst_zmq_msg_t *msg);
int zmq_msg_more(const vst_zmq_msg_t *msg);
void *zmq_stopwatch_start(void);
unsigned long zmq_stopwatch_intermediate(void *watch);
unsigned long zmq_stopwatch_stop(void *watch);
]])

local ZMQ_DEALER, ZMQ_SNDMORE = 5, 2
local ZMQ_LINGER, ZMQ_RCVTIMEO, ZMQ_SNDTIMEO = 17, 27, 28
local SLICE_MS = 100 -- one blocking receive at most; waits are made of these slices

local function fail(code, message)
  error({ code = code, message = message }, 0)
end

-- Keep the loaded libzmq mapped for the life of the process: its I/O threads outlive the Lua state
-- of a tool (deleted tool, closed comp), and unmapping their code under them crashes the host.
if ffi.os == "Windows" then
  ffi.cdef([[
int GetModuleHandleExA(unsigned long flags, const char *name, void **module);
void *LoadLibraryExA(const char *name, void *file, unsigned long flags);
]])
else
  ffi.cdef("void *dlopen(const char *filename, int flags);")
end

local function pin(path)
  if ffi.os == "Windows" then
    local name = path:lower():match("%.dll$") and path or path .. ".dll"
    return ffi.C.GetModuleHandleExA(1, name, ffi.new("void *[1]")) ~= 0 -- GET_MODULE_HANDLE_EX_FLAG_PIN
  end
  local flags = ffi.os == "OSX" and (0x2 + 0x80) or (0x2 + 0x1000) -- RTLD_NOW | RTLD_NODELETE
  return ffi.C.dlopen(path, flags) ~= nil
end

--- Load libzmq from the first path of `candidates` that loads (once per Lua state); raise
--- {code="libzmq"} if none does.
function M.load_libzmq(candidates)
  if M.libzmq then
    return M.libzmq
  end
  local tried = {}
  for _, path in ipairs(candidates) do
    if ffi.os == "Windows" and path:find("[/\\]") then
      -- load it first with its own folder searched for what it links against (the MSVC runtime copied
      -- beside it); ffi.load then finds the module already loaded
      ffi.C.LoadLibraryExA((path:gsub("/", "\\")), nil, 0x8) -- LOAD_WITH_ALTERED_SEARCH_PATH, backslashes
    end
    local ok, lib = pcall(ffi.load, path)
    if ok then
      local major = ffi.new("int[3]")
      if pcall(function() lib.zmq_version(major, major + 1, major + 2) end) and major[0] >= 4 then
        if not pin(path) then
          fail("libzmq", "loaded " .. path .. " but could not keep it loaded")
        end
        M.libzmq = lib
        return lib
      end
      tried[#tried + 1] = path .. " (not libzmq 4)"
    else
      tried[#tried + 1] = path .. " (" .. tostring(lib) .. ")"
    end
  end
  fail("libzmq", "cannot load libzmq; tried " .. table.concat(tried, ", ")
    .. ". Run `vst install resolve` again, or set VST_LIBZMQ to the libzmq file of a pyzmq installation.")
end

--- Elapsed wall-clock seconds since the stopwatch was made (libzmq's, the same on every OS).
local function stopwatch(zmq)
  local watch = zmq.zmq_stopwatch_start()
  local last, carried = 0, 0
  return function()
    local now = tonumber(zmq.zmq_stopwatch_intermediate(watch))
    if now < last then -- unsigned long wraps at 2^32 us on Windows
      carried = carried + 2 ^ 32
    end
    last = now
    return (carried + now) / 1e6
  end, function()
    zmq.zmq_stopwatch_stop(watch)
  end
end

local function zmq_error(zmq, what)
  local errnum = zmq.zmq_errno()
  fail("libzmq", what .. ": " .. ffi.string(zmq.zmq_strerror(errnum)))
end

local function set_int(zmq, socket, option, value)
  local box = ffi.new("int[1]", value)
  if zmq.zmq_setsockopt(socket, option, box, ffi.sizeof("int")) ~= 0 then
    zmq_error(zmq, "zmq_setsockopt")
  end
end

local Client = {}
Client.__index = Client

--- A DEALER socket connected to `address` (one per tool instance; not shared between threads).
function M.Client(zmq, address)
  local self = setmetatable({ zmq = zmq, address = address, next_id = 1, closed = false }, Client)
  self.context = zmq.zmq_ctx_new()
  if self.context == nil then
    zmq_error(zmq, "zmq_ctx_new")
  end
  self.socket = zmq.zmq_socket(self.context, ZMQ_DEALER)
  if self.socket == nil then
    zmq_error(zmq, "zmq_socket")
  end
  -- closed when the tool's Lua state goes away, socket first (a context with open sockets never ends)
  local socket, context, zmq_close, zmq_ctx_term = self.socket, self.context, zmq.zmq_close, zmq.zmq_ctx_term
  self.guard = ffi.gc(ffi.new("char[1]"), function()
    zmq_close(socket)
    zmq_ctx_term(context)
  end)
  set_int(zmq, self.socket, ZMQ_LINGER, 0)
  set_int(zmq, self.socket, ZMQ_RCVTIMEO, SLICE_MS)
  set_int(zmq, self.socket, ZMQ_SNDTIMEO, SLICE_MS)
  if zmq.zmq_connect(self.socket, address) ~= 0 then
    local errnum = zmq.zmq_errno()
    self:close()
    fail("libzmq", "cannot connect to " .. address .. ": " .. ffi.string(zmq.zmq_strerror(errnum))
      .. " (use tcp://127.0.0.1:PORT or ipc:///path)")
  end
  return self
end

--- Close the socket and its context; requests in flight are abandoned.
function Client:close()
  if self.closed then
    return
  end
  self.closed = true
  if self.guard then
    ffi.gc(self.guard, nil)
    self.guard = nil
  end
  if self.socket ~= nil then
    self.zmq.zmq_close(self.socket)
  end
  if self.context ~= nil then
    self.zmq.zmq_ctx_term(self.context)
  end
end

-- One frame of a multipart message; `data` a Lua string or {pointer, bytes}.
function Client:_send_frame(data, more, deadline, clock)
  local pointer, length
  if type(data) == "string" then
    pointer, length = data, #data
  else
    pointer, length = data[1], data[2]
  end
  while self.zmq.zmq_send(self.socket, pointer, length, more and ZMQ_SNDMORE or 0) < 0 do
    if clock() > deadline then -- the send queue is full: nobody is reading
      fail("unavailable", "the vst server at " .. self.address .. " does not accept requests")
    end
  end
end

--- Send a request; returns its id. `planes` is a list of {pointer, bytes} payload frames (or nil).
function Client:send(op, fields, planes, timeout)
  local id = self.next_id
  self.next_id = id + 1
  local header = { v = M.PROTOCOL_VERSION, id = id, op = op }
  for key, value in pairs(fields or {}) do
    header[key] = value
  end
  local clock, stop = stopwatch(self.zmq)
  local ok, err = pcall(function()
    local frames = planes or {}
    self:_send_frame(msgpack.encode(header), #frames > 0, timeout, clock)
    for i, frame in ipairs(frames) do
      self:_send_frame(frame, i < #frames, timeout, clock)
    end
  end)
  stop()
  if not ok then
    error(err, 0)
  end
  return id
end

-- Receive one whole message within a slice; nil if none came. Frames are zmq messages (closed
-- when garbage-collected).
function Client:_receive()
  local zmq = self.zmq
  local frames = {}
  repeat
    local msg = ffi.gc(ffi.new("vst_zmq_msg_t"), zmq.zmq_msg_close)
    zmq.zmq_msg_init(msg)
    if zmq.zmq_msg_recv(msg, self.socket, 0) < 0 then
      if #frames == 0 then
        return nil
      end
      fail("protocol", "a reply from the server arrived incomplete")
    end
    frames[#frames + 1] = msg
  until zmq.zmq_msg_more(msg) == 0
  return frames
end

--- The bytes of a received frame as a Lua string.
function Client:frame_string(frame)
  return ffi.string(self.zmq.zmq_msg_data(frame), self.zmq.zmq_msg_size(frame))
end

--- Pointer and size of a received frame, valid while `frame` is referenced.
function Client:frame_bytes(frame)
  return self.zmq.zmq_msg_data(frame), tonumber(self.zmq.zmq_msg_size(frame))
end

--- Wait for the reply to request `id`. Options: `timeout` (seconds without any sign of life from the
--- server; pings are sent every HEARTBEAT seconds of silence), `abort` (a function polled between
--- slices; true stops waiting). Returns the reply header and its payload frames; raises on an error
--- reply, silence, abort, or after MAX_WAIT seconds.
function Client:wait(id, options)
  local timeout = options.timeout or 10
  local clock, stop = stopwatch(self.zmq)
  local ok, header, payload = pcall(function()
    local last_sign, last_ping = 0, 0
    while true do
      local now = clock()
      if options.abort and options.abort() then
        fail("aborted", "stopped: the render was cancelled")
      end
      if now - last_sign > timeout then
        fail("unavailable", string.format(
          "no vst server answers at %s (nothing for %g s). Start one with `vst serve`, or check the "
          .. "Server address.", self.address, timeout))
      end
      if now > M.MAX_WAIT then
        fail("unavailable", string.format("the vst server at %s has not finished the request in %g s",
          self.address, M.MAX_WAIT))
      end
      if now - last_sign > M.HEARTBEAT and now - last_ping > M.HEARTBEAT then
        self:send("ping", nil, nil, SLICE_MS / 1000)
        last_ping = now
      end
      local frames = self:_receive()
      if frames then
        last_sign = clock()
        local decoded, reply = pcall(msgpack.decode, self:frame_string(frames[1]))
        if not decoded or type(reply) ~= "table" then
          fail("protocol", "the server sent a header this plug-in cannot read: " .. tostring(reply))
        end
        if reply.v ~= M.PROTOCOL_VERSION then
          fail("protocol", string.format("the server speaks protocol version %s; this plug-in speaks %d. "
            .. "Install the Fuse from the same vst version as the server.", tostring(reply.v), M.PROTOCOL_VERSION))
        end
        if reply.id == id then
          if reply.ok ~= true then
            local err = type(reply.error) == "table" and reply.error or {}
            fail(err.code or "internal", err.message or "the server reported an error without a message")
          end
          table.remove(frames, 1)
          return reply, frames
        end
        -- a ping reply or a late reply to an abandoned request: a sign of life, nothing more
      end
    end
  end)
  stop()
  if not ok then
    error(header, 0)
  end
  return header, payload
end

--- send + wait.
function Client:call(op, fields, planes, options)
  options = options or {}
  local id = self:send(op, fields, planes, options.timeout or 10)
  return self:wait(id, options)
end

return M
