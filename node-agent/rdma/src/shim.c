/*
 * flowmesh's thin layer over libibverbs for RDMA UD probes.
 *
 * Most of the verbs API a UD prober needs (posting, polling, the extended
 * CQ readers) is static inline in <infiniband/verbs.h>, so Rust cannot
 * call it directly. This file wraps exactly what src/verbs.rs uses behind
 * opaque pointers and plain integers, so the Rust side never sees a verbs
 * struct layout. It owns all buffers: receive slots are reposted as soon as
 * their bytes are copied out, send slots are reused round-robin (a slot is
 * reused only after FM_SEND_SLOTS later sends, far more than the send
 * queue can hold in flight).
 */
#include <infiniband/verbs.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FM_SLOT 128
#define FM_RECV_SLOTS 256
#define FM_SEND_SLOTS 256
#define FM_AH_CACHE 1024
#define FM_RECV_TAG (1ULL << 63)

struct fm_ah {
	uint8_t gid[16];
	uint8_t traffic_class;
	struct ibv_ah *ah;
};

struct fm_ud {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *channel;
	struct ibv_cq_ex *cq_ex; /* NULL when the provider has no extended CQs */
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	struct ibv_mr *mr;
	uint8_t *buf;
	uint8_t port;
	uint8_t gid_index;
	uint8_t gid[16];
	uint32_t qkey;
	uint64_t clock_khz;
	uint64_t timestamp_mask;
	uint32_t next_send;
	struct fm_ah ahs[FM_AH_CACHE];
	uint32_t ah_count;
	uint32_t ah_next;
};

/* One completion as src/verbs.rs reads it (same layout there). */
struct fm_completion {
	uint64_t wr_id;
	uint64_t timestamp;
	uint32_t status;
	uint32_t src_qp;
	uint32_t byte_len;
	uint8_t is_recv;
	uint8_t has_timestamp;
	uint8_t pad[2];
	uint8_t data[FM_SLOT];
};

/* Number of RDMA devices, or -errno. */
int fm_device_count(void)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list)
		return -errno;
	ibv_free_device_list(list);
	return n;
}

static int post_recv(struct fm_ud *u, uint32_t slot)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)(u->buf + (size_t)slot * FM_SLOT),
		.length = FM_SLOT,
		.lkey = u->mr->lkey,
	};
	struct ibv_recv_wr wr = { .wr_id = FM_RECV_TAG | slot, .sg_list = &sge, .num_sge = 1 };
	struct ibv_recv_wr *bad = NULL;
	return ibv_post_recv(u->qp, &wr, &bad);
}

void fm_ud_close(struct fm_ud *u)
{
	if (!u)
		return;
	for (uint32_t i = 0; i < u->ah_count; i++)
		ibv_destroy_ah(u->ahs[i].ah);
	if (u->qp)
		ibv_destroy_qp(u->qp);
	if (u->cq)
		ibv_destroy_cq(u->cq);
	if (u->channel)
		ibv_destroy_comp_channel(u->channel);
	if (u->mr)
		ibv_dereg_mr(u->mr);
	if (u->pd)
		ibv_dealloc_pd(u->pd);
	if (u->ctx)
		ibv_close_device(u->ctx);
	free(u->buf);
	free(u);
}

/* Finds the port and GID index holding `gid` on `ctx`; 0 when found. */
static int find_gid(struct ibv_context *ctx, const uint8_t gid[16], uint8_t *port, uint8_t *index)
{
	struct ibv_device_attr attr;
	if (ibv_query_device(ctx, &attr))
		return -1;
	for (uint8_t p = 1; p <= attr.phys_port_cnt; p++) {
		struct ibv_port_attr pattr;
		if (ibv_query_port(ctx, p, &pattr))
			continue;
		for (int i = 0; i < pattr.gid_tbl_len && i < 256; i++) {
			union ibv_gid g;
			if (ibv_query_gid(ctx, p, i, &g) == 0 && memcmp(g.raw, gid, 16) == 0) {
				*port = p;
				*index = (uint8_t)i;
				return 0;
			}
		}
	}
	return -1;
}

#define FAIL(what)                                  \
	do {                                        \
		*stage = what;                      \
		*err = errno ? errno : EIO;         \
		fm_ud_close(u);                     \
		return NULL;                        \
	} while (0)

/*
 * Opens a UD queue pair on whichever device and port holds `gid`. On
 * failure returns NULL with `*stage` naming the verbs call and `*err` its
 * errno; ENODEV when there is no RDMA device, ENOSYS when the kernel has no
 * verbs support, ENOENT when no port holds `gid`.
 */
struct fm_ud *fm_ud_open(const uint8_t gid[16], uint32_t qkey, const char **stage, int *err)
{
	struct fm_ud *u = NULL;
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	*stage = "ibv_get_device_list";
	if (!list) {
		*err = errno ? errno : EIO;
		return NULL;
	}
	if (n == 0) {
		ibv_free_device_list(list);
		*err = ENODEV;
		return NULL;
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		ibv_free_device_list(list);
		*err = ENOMEM;
		return NULL;
	}
	for (int d = 0; d < n && !u->ctx; d++) {
		struct ibv_context *ctx = ibv_open_device(list[d]);
		if (!ctx)
			continue;
		if (find_gid(ctx, gid, &u->port, &u->gid_index) == 0)
			u->ctx = ctx;
		else
			ibv_close_device(ctx);
	}
	ibv_free_device_list(list);
	if (!u->ctx) {
		*stage = "ibv_query_gid";
		*err = ENOENT;
		fm_ud_close(u);
		return NULL;
	}
	memcpy(u->gid, gid, 16);
	u->qkey = qkey;

	errno = 0;
	struct ibv_device_attr_ex dattr;
	memset(&dattr, 0, sizeof(dattr));
	if (ibv_query_device_ex(u->ctx, NULL, &dattr) == 0) {
		u->clock_khz = dattr.hca_core_clock;
		u->timestamp_mask = dattr.completion_timestamp_mask;
	}
	if (!(u->pd = ibv_alloc_pd(u->ctx)))
		FAIL("ibv_alloc_pd");
	size_t bytes = (size_t)(FM_RECV_SLOTS + FM_SEND_SLOTS) * FM_SLOT;
	if (!(u->buf = calloc(1, bytes)))
		FAIL("calloc");
	if (!(u->mr = ibv_reg_mr(u->pd, u->buf, bytes, IBV_ACCESS_LOCAL_WRITE)))
		FAIL("ibv_reg_mr");
	if (!(u->channel = ibv_create_comp_channel(u->ctx)))
		FAIL("ibv_create_comp_channel");
	int cqe = FM_RECV_SLOTS + FM_SEND_SLOTS;
	if (u->clock_khz && u->timestamp_mask) {
		struct ibv_cq_init_attr_ex cattr = {
			.cqe = cqe,
			.channel = u->channel,
			.wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_SRC_QP |
				    IBV_WC_EX_WITH_COMPLETION_TIMESTAMP,
		};
		u->cq_ex = ibv_create_cq_ex(u->ctx, &cattr);
		if (u->cq_ex)
			u->cq = ibv_cq_ex_to_cq(u->cq_ex);
	}
	if (!u->cq) {
		/* No completion timestamps: the agent stamps completions itself. */
		u->timestamp_mask = 0;
		if (!(u->cq = ibv_create_cq(u->ctx, cqe, NULL, u->channel, 0)))
			FAIL("ibv_create_cq");
	}
	struct ibv_qp_init_attr qattr = {
		.send_cq = u->cq,
		.recv_cq = u->cq,
		.cap = { .max_send_wr = FM_SEND_SLOTS / 2, .max_recv_wr = FM_RECV_SLOTS,
			 .max_send_sge = 1, .max_recv_sge = 1 },
		.qp_type = IBV_QPT_UD,
	};
	if (!(u->qp = ibv_create_qp(u->pd, &qattr)))
		FAIL("ibv_create_qp");
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = u->port, .qkey = qkey };
	if (ibv_modify_qp(u->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY))
		FAIL("ibv_modify_qp(INIT)");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	if (ibv_modify_qp(u->qp, &a, IBV_QP_STATE))
		FAIL("ibv_modify_qp(RTR)");
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = 0;
	if (ibv_modify_qp(u->qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN))
		FAIL("ibv_modify_qp(RTS)");
	for (uint32_t s = 0; s < FM_RECV_SLOTS; s++)
		if (post_recv(u, s))
			FAIL("ibv_post_recv");
	if (ibv_req_notify_cq(u->cq, 0))
		FAIL("ibv_req_notify_cq");
	return u;
}

uint32_t fm_ud_qpn(const struct fm_ud *u) { return u->qp->qp_num; }
uint64_t fm_ud_clock_khz(const struct fm_ud *u) { return u->clock_khz; }
uint64_t fm_ud_timestamp_mask(const struct fm_ud *u) { return u->timestamp_mask; }

/* The NIC's clock now, in its cycles; 0 on success. */
int fm_ud_read_clock(struct fm_ud *u, uint64_t *cycles)
{
	struct ibv_values_ex v = { .comp_mask = IBV_VALUES_MASK_RAW_CLOCK };
	int rc = ibv_query_rt_values_ex(u->ctx, &v);
	if (rc)
		return rc;
	/* Providers put the raw cycle count in the timespec (mlx5: tv_nsec). */
	*cycles = (uint64_t)v.raw_clock.tv_sec * 1000000000ULL + (uint64_t)v.raw_clock.tv_nsec;
	return 0;
}

static struct ibv_ah *address_handle(struct fm_ud *u, const uint8_t gid[16], uint8_t traffic_class)
{
	for (uint32_t i = 0; i < u->ah_count; i++)
		if (u->ahs[i].traffic_class == traffic_class && memcmp(u->ahs[i].gid, gid, 16) == 0)
			return u->ahs[i].ah;
	struct ibv_ah_attr attr = {
		.is_global = 1,
		.port_num = u->port,
		.grh = { .sgid_index = u->gid_index, .hop_limit = 64, .traffic_class = traffic_class },
	};
	memcpy(attr.grh.dgid.raw, gid, 16);
	struct ibv_ah *ah = ibv_create_ah(u->pd, &attr);
	if (!ah)
		return NULL;
	/* Bounded: past FM_AH_CACHE peers (far more than a pinglist holds),
	 * the oldest entry is replaced. */
	uint32_t at;
	if (u->ah_count < FM_AH_CACHE) {
		at = u->ah_count++;
	} else {
		at = u->ah_next++ % FM_AH_CACHE;
		ibv_destroy_ah(u->ahs[at].ah);
	}
	memcpy(u->ahs[at].gid, gid, 16);
	u->ahs[at].traffic_class = traffic_class;
	u->ahs[at].ah = ah;
	return ah;
}

/* Sends `len` bytes to (gid, qpn) with a signalled completion tagged
 * `wr_id`; 0 or an errno. */
int fm_ud_send(struct fm_ud *u, const uint8_t gid[16], uint32_t qpn, uint32_t qkey, uint8_t traffic_class,
	       const uint8_t *payload, uint32_t len, uint64_t wr_id)
{
	if (len > FM_SLOT || (wr_id & FM_RECV_TAG))
		return EINVAL;
	struct ibv_ah *ah = address_handle(u, gid, traffic_class);
	if (!ah)
		return errno ? errno : EIO;
	uint8_t *slot = u->buf + (size_t)(FM_RECV_SLOTS + u->next_send++ % FM_SEND_SLOTS) * FM_SLOT;
	memcpy(slot, payload, len);
	struct ibv_sge sge = { .addr = (uintptr_t)slot, .length = len, .lkey = u->mr->lkey };
	struct ibv_send_wr wr = {
		.wr_id = wr_id,
		.sg_list = &sge,
		.num_sge = 1,
		.opcode = IBV_WR_SEND,
		.send_flags = IBV_SEND_SIGNALED,
	};
	wr.wr.ud.ah = ah;
	wr.wr.ud.remote_qpn = qpn;
	wr.wr.ud.remote_qkey = qkey;
	struct ibv_send_wr *bad = NULL;
	return ibv_post_send(u->qp, &wr, &bad);
}

static void take_recv(struct fm_ud *u, struct fm_completion *c)
{
	uint32_t slot = (uint32_t)(c->wr_id & ~FM_RECV_TAG);
	c->is_recv = 1;
	if (slot < FM_RECV_SLOTS) {
		uint32_t n = c->byte_len < FM_SLOT ? c->byte_len : FM_SLOT;
		memcpy(c->data, u->buf + (size_t)slot * FM_SLOT, n);
		/* A failed repost shrinks the receive queue; nothing else to do. */
		(void)post_recv(u, slot);
	}
}

static int poll_some(struct fm_ud *u, struct fm_completion *out, int max)
{
	int n = 0;
	if (u->cq_ex) {
		struct ibv_poll_cq_attr pattr = { 0 };
		if (ibv_start_poll(u->cq_ex, &pattr))
			return 0;
		do {
			struct fm_completion *c = &out[n++];
			memset(c, 0, sizeof(*c) - FM_SLOT);
			c->wr_id = u->cq_ex->wr_id;
			c->status = u->cq_ex->status;
			c->timestamp = ibv_wc_read_completion_ts(u->cq_ex);
			c->has_timestamp = 1;
			if (c->wr_id & FM_RECV_TAG) {
				c->byte_len = ibv_wc_read_byte_len(u->cq_ex);
				c->src_qp = ibv_wc_read_src_qp(u->cq_ex);
				take_recv(u, c);
			}
		} while (n < max && ibv_next_poll(u->cq_ex) == 0);
		ibv_end_poll(u->cq_ex);
		return n;
	}
	struct ibv_wc wc[16];
	int got = ibv_poll_cq(u->cq, max < 16 ? max : 16, wc);
	for (int i = 0; i < got; i++) {
		struct fm_completion *c = &out[n++];
		memset(c, 0, sizeof(*c) - FM_SLOT);
		c->wr_id = wc[i].wr_id;
		c->status = wc[i].status;
		if (c->wr_id & FM_RECV_TAG) {
			c->byte_len = wc[i].byte_len;
			c->src_qp = wc[i].src_qp;
			take_recv(u, c);
		}
	}
	return n;
}

/* Up to `max` completions, waiting at most `timeout_ms` for the first;
 * the count, or -errno. */
int fm_ud_wait(struct fm_ud *u, int timeout_ms, struct fm_completion *out, int max)
{
	int n = poll_some(u, out, max);
	if (n)
		return n;
	struct pollfd p = { .fd = u->channel->fd, .events = POLLIN };
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -errno;
	if (r == 0)
		return 0;
	struct ibv_cq *cq;
	void *context;
	if (ibv_get_cq_event(u->channel, &cq, &context) == 0) {
		ibv_ack_cq_events(cq, 1);
		/* Re-arm before polling, so a completion after the poll still
		 * raises an event. */
		ibv_req_notify_cq(u->cq, 0);
	}
	return poll_some(u, out, max);
}
