/* The mapping fast path's interpreter: runs a plan that cgthub/mapping/native.py compiles from a
 * mapping rule, and builds the canonical event's pydantic instances as the generated Python does.
 *
 * Why C: the generated Python function is straight-line code already, and the interpreter's own
 * dispatch is most of its cost (about 60% of a record's instructions). Here each step is one switch
 * case over PyObject pointers. Semantics are the generated Python's, step for step; whatever a step
 * is not sure of raises LookupError, and the caller runs the reference path, which decides (so this
 * file never rejects a payload and never accepts what the reference would refuse).
 * tests/test_mapping_codegen.py runs every fixture and mutated payloads through both paths.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stddef.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum {
    OP_HOLD = 0,      /* regs[a] = regs[b].get(o1) if that is a dict, else None (a path prefix) */
    OP_READ = 1,      /* regs[a] = regs[b].get(o1) (regs[b] a dict or None) */
    OP_CALLREAD = 2,  /* regs[a] = o1(record) */
    OP_CONST = 3,     /* regs[a] = o1 */
    OP_EMPTY = 4,     /* None, "" or []: b=0 absent, 1 unsure, 2 regs[a] = o1 */
    OP_T_CALL = 10,   /* regs[a] = o1(regs[a]) */
    OP_T_PREFIX = 11, /* f"{o1}{v}" */
    OP_T_SUFFIX = 12, /* f"{v}{o1}" */
    OP_T_STR = 13,    /* str(v) */
    OP_T_METHOD = 14, /* str(v).<o1>() */
    OP_T_INT = 15,    /* int(str(v).strip()) */
    OP_T_FLOAT = 16,  /* float(str(v).strip()) */
    OP_T_PSEUDO = 17, /* o2(o1, str(v)): pseudonymize, with the key o3().pseudonym_key */
    OP_T_DATETIME = 18, /* ISO 8601 to the second or HL7 TS to the second in a zone (o1: its utcoffset); else o2(v) */
    OP_T_DIN = 19,    /* an ISBT 128 DIN body with its check character; else o2(v) */
    OP_T_COI = 20,    /* a CoI id; else o2(v) */
    OP_MAP = 21,      /* o1[str(v)] */
    OP_PATTERN = 22,  /* o1(str(v)) must be true */
    OP_ALLOWED = 23,  /* str(v) in o1 */
    OP_TOKENIZE = 24, /* None: unsure; else o1(v) */
    OP_CHK_STR = 30,  /* exactly a str (b: or None), of length o1..o2 (None: unbounded) */
    OP_CHK_EXACT = 31, /* exactly of type o1 (b: or None) */
    OP_CHK_FLOAT = 32, /* a float, or an int made one (b: or None) */
    OP_CHK_AWARE = 33, /* a datetime with an offset (b: or None) */
    OP_CHK_CALL = 34, /* regs[a] = o1(regs[a]) */
    OP_CHK_TABLE = 35, /* regs[a] = o1[v] where v is exactly a str among o1's keys (o2(v) decided early), else o2(v) */
    OP_DICT = 40,     /* regs[a] = {key: regs[r] for (key, r) in o1 if present}, then o2(it); o3: presence */
    OP_MODEL = 41,    /* regs[a] = an instance of o1 from the fields o2; o3: presence */
    OP_RETURN = 50,
};

/* How a model field gets its value. */
enum { V_REG = 0, V_CONST = 1, V_FACTORY = 2, V_DEFAULT_ONLY = 3 };

typedef struct {
    int code, a, b;
    PyObject *o1, *o2, *o3;
    /* Pre-read forms of o3 (presence: any of these registers present; n = -1: always). */
    Py_ssize_t npresent;
    int *present;
} Op;

typedef struct {
    PyObject *name;
    int vkind;
    int reg;              /* V_REG */
    PyObject *value;      /* V_CONST / V_FACTORY */
    Py_ssize_t npresent;  /* -1: always there (counted in fields_set); else any of `present` */
    int *present;
    int dkind;            /* when not present: V_CONST, V_FACTORY or -1 (unsure) */
    PyObject *dvalue;
} Field;

typedef struct {
    Py_ssize_t nfields;
    Field *fields;
    int attributes; /* the values go in as attributes (the class's shared keys), not as a __dict__ made here */
} ModelSpec;

typedef struct {
    PyObject_HEAD
    Op *ops;
    Py_ssize_t nops;
    ModelSpec *models; /* one per op (NULL where not OP_MODEL) */
    int nregs;
    PyObject *absent;
    PyObject *setters[4]; /* __dict__, __pydantic_fields_set__, __pydantic_extra__, __pydantic_private__ */
} Build;

static PyObject *str_strip, *empty_str, *empty_tuple;

static int unsure(void) {
    PyErr_SetNone(PyExc_LookupError);
    return -1;
}

static int read_presence(PyObject *spec, Py_ssize_t *n, int **regs) {
    if (spec == Py_None) {
        *n = -1;
        *regs = NULL;
        return 0;
    }
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "presence: a tuple of registers or None");
        return -1;
    }
    *n = PyTuple_GET_SIZE(spec);
    *regs = PyMem_Calloc(*n ? *n : 1, sizeof(int));
    if (*regs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        long r = PyLong_AsLong(PyTuple_GET_ITEM(spec, i));
        if (r == -1 && PyErr_Occurred()) return -1;
        (*regs)[i] = (int)r;
    }
    return 0;
}

static void build_clear_ops(Build *self) {
    for (Py_ssize_t i = 0; i < self->nops; i++) {
        Op *op = &self->ops[i];
        Py_XDECREF(op->o1);
        Py_XDECREF(op->o2);
        Py_XDECREF(op->o3);
        PyMem_Free(op->present);
        if (self->models && self->models[i].fields) {
            for (Py_ssize_t f = 0; f < self->models[i].nfields; f++) {
                Field *fd = &self->models[i].fields[f];
                Py_XDECREF(fd->name);
                Py_XDECREF(fd->value);
                Py_XDECREF(fd->dvalue);
                PyMem_Free(fd->present);
            }
            PyMem_Free(self->models[i].fields);
        }
    }
    PyMem_Free(self->ops);
    PyMem_Free(self->models);
    self->ops = NULL;
    self->models = NULL;
    self->nops = 0;
}

static void build_dealloc(Build *self) {
    build_clear_ops(self);
    Py_XDECREF(self->absent);
    for (int i = 0; i < 4; i++) Py_XDECREF(self->setters[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int read_model(ModelSpec *spec, PyObject *fields) {
    if (!PyTuple_Check(fields)) {
        PyErr_SetString(PyExc_TypeError, "model fields: a tuple");
        return -1;
    }
    spec->nfields = PyTuple_GET_SIZE(fields);
    spec->fields = PyMem_Calloc(spec->nfields ? spec->nfields : 1, sizeof(Field));
    if (spec->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t f = 0; f < spec->nfields; f++) {
        Field *fd = &spec->fields[f];
        PyObject *name, *value, *presence, *dvalue;
        int vkind, dkind;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, f), "UiOOiO", &name, &vkind, &value, &presence, &dkind, &dvalue))
            return -1;
        fd->name = Py_NewRef(name);
        fd->vkind = vkind;
        if (vkind == V_REG) {
            long r = PyLong_AsLong(value);
            if (r == -1 && PyErr_Occurred()) return -1;
            fd->reg = (int)r;
        } else {
            fd->value = Py_NewRef(value);
        }
        if (read_presence(presence, &fd->npresent, &fd->present) < 0) return -1;
        fd->dkind = dkind;
        fd->dvalue = Py_NewRef(dvalue);
    }
    return 0;
}

/* Whether a model's values may go in as plain attributes (object.__setattr__, into the instance's
 * own dict as CPython keeps it): its instances have a managed dict and no field's name is a data
 * descriptor of the class (which would take the value instead). */
static int plain_attributes(PyTypeObject *type, ModelSpec *spec) {
    if (!(type->tp_flags & Py_TPFLAGS_MANAGED_DICT)) return 0;
    for (Py_ssize_t f = 0; f < spec->nfields; f++) {
        PyObject *found = _PyType_Lookup(type, spec->fields[f].name);
        if (found != NULL && Py_TYPE(found)->tp_descr_set != NULL) return 0;
    }
    return 1;
}

static int check_reg(Build *self, int r) {
    if (r < 0 || r >= self->nregs) {
        PyErr_Format(PyExc_ValueError, "register %d out of range", r);
        return -1;
    }
    return 0;
}

/* Build(ops, nregs, absent, setters): ops a tuple of (code, a, b, o1, o2, o3). */
static int build_init(Build *self, PyObject *args, PyObject *kwds) {
    PyObject *ops, *absent, *setters;
    int nregs;
    static char *kwlist[] = {"ops", "nregs", "absent", "setters", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!iOO!", kwlist, &PyTuple_Type, &ops, &nregs, &absent,
                                     &PyTuple_Type, &setters))
        return -1;
    if (PyTuple_GET_SIZE(setters) != 4) {
        PyErr_SetString(PyExc_ValueError, "setters: the four slot descriptors");
        return -1;
    }
    if (nregs < 3) {
        PyErr_SetString(PyExc_ValueError, "nregs: at least the three inputs");
        return -1;
    }
    build_clear_ops(self);
    self->nregs = nregs;
    Py_XSETREF(self->absent, Py_NewRef(absent));
    for (int i = 0; i < 4; i++) Py_XSETREF(self->setters[i], Py_NewRef(PyTuple_GET_ITEM(setters, i)));
    Py_ssize_t n = PyTuple_GET_SIZE(ops);
    self->ops = PyMem_Calloc(n ? n : 1, sizeof(Op));
    self->models = PyMem_Calloc(n ? n : 1, sizeof(ModelSpec));
    if (self->ops == NULL || self->models == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->nops = n;
    int returns = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Op *op = &self->ops[i];
        PyObject *o1, *o2, *o3;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(ops, i), "iiiOOO", &op->code, &op->a, &op->b, &o1, &o2, &o3)) return -1;
        op->o1 = Py_NewRef(o1);
        op->o2 = Py_NewRef(o2);
        op->o3 = Py_NewRef(o3);
        op->npresent = -1;
        if (check_reg(self, op->a) < 0) return -1;
        if ((op->code == OP_HOLD || op->code == OP_READ) && check_reg(self, op->b) < 0) return -1;
        /* The operands a step uses as a given type are that type (else a run would fail inside). */
        const char *wrong = NULL;
        if ((op->code == OP_HOLD || op->code == OP_READ || op->code == OP_T_PREFIX || op->code == OP_T_SUFFIX ||
             op->code == OP_T_METHOD || op->code == OP_T_PSEUDO) && !PyUnicode_Check(o1))
            wrong = "a str operand";
        else if ((op->code == OP_MAP || op->code == OP_CHK_TABLE) && !PyDict_Check(o1))
            wrong = "a dict operand";
        else if (op->code == OP_ALLOWED && !PyAnySet_Check(o1))
            wrong = "a set operand";
        else if (op->code == OP_CHK_EXACT && !PyType_Check(o1))
            wrong = "a type operand";
        else if (op->code == OP_CHK_STR && ((o1 != Py_None && !PyLong_Check(o1)) || (o2 != Py_None && !PyLong_Check(o2))))
            wrong = "int bounds";
        else if ((op->code == OP_CALLREAD || op->code == OP_T_CALL || op->code == OP_CHK_CALL || op->code == OP_PATTERN ||
                  op->code == OP_TOKENIZE || op->code == OP_T_DATETIME) && !PyCallable_Check(o1))
            wrong = "a callable operand";
        else if ((op->code == OP_T_PSEUDO || op->code == OP_T_DATETIME || op->code == OP_T_DIN || op->code == OP_T_COI ||
                  op->code == OP_CHK_TABLE) &&
                 !PyCallable_Check(o2))
            wrong = "a Python fallback";
        else if (op->code == OP_T_PSEUDO && !PyCallable_Check(o3))
            wrong = "the settings";
        if (wrong != NULL) {
            PyErr_Format(PyExc_ValueError, "step %zd (code %d) needs %s", i, op->code, wrong);
            return -1;
        }
        if (op->code == OP_DICT || op->code == OP_MODEL) {
            if (read_presence(o3, &op->npresent, &op->present) < 0) return -1;
            for (Py_ssize_t k = 0; k < op->npresent; k++)
                if (check_reg(self, op->present[k]) < 0) return -1;
        }
        if (op->code == OP_DICT) {
            if (!PyTuple_Check(o1)) {
                PyErr_SetString(PyExc_TypeError, "dict entries: a tuple of (key, register)");
                return -1;
            }
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(o1); k++) {
                PyObject *key;
                int r;
                if (!PyArg_ParseTuple(PyTuple_GET_ITEM(o1, k), "Ui", &key, &r)) return -1;
                if (check_reg(self, r) < 0) return -1;
            }
        }
        if (op->code == OP_MODEL) {
            if (!PyType_Check(o1)) {
                PyErr_SetString(PyExc_TypeError, "model: a class");
                return -1;
            }
            if (read_model(&self->models[i], o2) < 0) return -1;
            self->models[i].attributes = plain_attributes((PyTypeObject *)o1, &self->models[i]);
            for (Py_ssize_t f = 0; f < self->models[i].nfields; f++) {
                Field *fd = &self->models[i].fields[f];
                if (fd->vkind == V_REG && check_reg(self, fd->reg) < 0) return -1;
                for (Py_ssize_t k = 0; k < fd->npresent; k++)
                    if (check_reg(self, fd->present[k]) < 0) return -1;
            }
        }
        if (op->code == OP_RETURN) returns++;
    }
    if (returns == 0 || self->ops[n - 1].code != OP_RETURN) {
        PyErr_SetString(PyExc_ValueError, "a plan ends with its return");
        return -1;
    }
    return 0;
}

/* ---- values ------------------------------------------------------------------------------- */

/* `not v and (v is None or v == "" or v == [])`, for the built-in types records hold. */
static int is_empty(PyObject *v) {
    if (v == Py_None) return 1;
    if (PyUnicode_CheckExact(v)) return PyUnicode_GET_LENGTH(v) == 0;
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyLong_Type || t == &PyFloat_Type || t == &PyBool_Type || t == &PyDict_Type || t == &PyTuple_Type)
        return 0;
    if (t == &PyList_Type) return PyList_GET_SIZE(v) == 0;
    int truth = PyObject_IsTrue(v);
    if (truth != 0) return truth < 0 ? -1 : 0;
    int eq = PyObject_RichCompareBool(v, empty_str, Py_EQ);
    if (eq != 0) return eq;
    PyObject *empty_list = PyList_New(0);
    if (empty_list == NULL) return -1;
    eq = PyObject_RichCompareBool(v, empty_list, Py_EQ);
    Py_DECREF(empty_list);
    return eq;
}

static PyObject *as_str(PyObject *v) {
    if (PyUnicode_CheckExact(v)) return Py_NewRef(v);
    return PyObject_Str(v);
}

static PyObject *stripped_str(PyObject *v) {
    PyObject *s = as_str(v);
    if (s == NULL) return NULL;
    PyObject *out = PyObject_CallMethodNoArgs(s, str_strip);
    Py_DECREF(s);
    return out;
}

static int digits(const Py_UCS1 *s, int n, int *out) {
    int value = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        value = value * 10 + (s[i] - '0');
    }
    *out = value;
    return 1;
}

static int days_in_month(int y, int m) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

/* The two shapes of `transforms.datetime_transform`'s short cut (19-character ISO 8601 with "T" or
 * " ", 14 ASCII digits), parsed as UTC, minus the zone's offset for that wall-clock time: what the
 * short cut computes. NULL without an error: not sure, the Python transform decides. */
static PyObject *fast_datetime(PyObject *v, PyObject *utcoffset) {
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) return NULL;
    Py_ssize_t size = PyUnicode_GET_LENGTH(v);
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    int y, mo, d, h, mi, sec;
    if (size == 19) {
        if (s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' || s[16] != ':') return NULL;
        if (!digits(s, 4, &y) || !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d) || !digits(s + 11, 2, &h) ||
            !digits(s + 14, 2, &mi) || !digits(s + 17, 2, &sec))
            return NULL;
    } else if (size == 14) {
        if (!digits(s, 4, &y) || !digits(s + 4, 2, &mo) || !digits(s + 6, 2, &d) || !digits(s + 8, 2, &h) ||
            !digits(s + 10, 2, &mi) || !digits(s + 12, 2, &sec))
            return NULL;
    } else {
        return NULL;
    }
    /* Year 1 and 9999 are left to Python: the offset's subtraction may leave the calendar there. */
    if (y < 2 || y > 9998 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
        return NULL;
    PyObject *moment = PyDateTimeAPI->DateTime_FromDateAndTime(y, mo, d, h, mi, sec, 0, PyDateTime_TimeZone_UTC,
                                                               PyDateTimeAPI->DateTimeType);
    if (moment == NULL) return NULL;
    PyObject *offset = PyObject_CallOneArg(utcoffset, moment);
    if (offset == NULL) {
        Py_DECREF(moment);
        return NULL;
    }
    PyObject *out = PyNumber_Subtract(moment, offset);
    Py_DECREF(moment);
    Py_DECREF(offset);
    return out;
}

static int mod37_value(Py_UCS1 c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'Z') return c - 'A' + 10;
    return -1;
}

static const char ALPHABET[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*";

/* identifiers.normalize_din for the usual value: 13 or 14 ASCII characters without spaces around
 * or inside, already upper case; NULL without an error otherwise (the Python transform decides). */
static PyObject *fast_din(PyObject *v) {
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v)) return NULL;
    Py_ssize_t size = PyUnicode_GET_LENGTH(v);
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    if (size != 13 && size != 14) return NULL;
    if (!(s[0] >= 'A' && s[0] <= 'Z')) return NULL;
    int total = 0;
    for (int i = 0; i < 13; i++) {
        int value = mod37_value(s[i]);
        if (value < 0 || (i >= 5 && value > 9)) return NULL;
        total = ((total + value) * 2) % 37;
    }
    char check = ALPHABET[(38 - total) % 37];
    if (size == 14) {
        if (s[13] != (Py_UCS1)check) return NULL;
        return Py_NewRef(v);
    }
    char out[14];
    memcpy(out, s, 13);
    out[13] = check;
    return PyUnicode_FromStringAndSize(out, 14);
}

/* identifiers.validate_coi_id for the usual value: "CH", a letter, four letters or digits, eight
 * digits, already upper case and stripped; NULL without an error otherwise. */
static PyObject *fast_coi(PyObject *v) {
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v) || PyUnicode_GET_LENGTH(v) != 15) return NULL;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    if (s[0] != 'C' || s[1] != 'H' || !(s[2] >= 'A' && s[2] <= 'Z')) return NULL;
    for (int i = 3; i < 7; i++)
        if (mod37_value(s[i]) < 0) return NULL;
    for (int i = 7; i < 15; i++)
        if (!(s[i] >= '0' && s[i] <= '9')) return NULL;
    return Py_NewRef(v);
}

/* ---- pseudonyms: HMAC-SHA-256 as cgthub.pseudonym computes it ------------------------------ */
/* SHA-256 (FIPS 180-4). The pseudonym of a value is two compressions once the key's pads are
 * absorbed; through hashlib from here it was six calls and a quarter of a record's instructions. */

typedef struct {
    uint32_t h[8];
    uint64_t length; /* bytes absorbed */
    unsigned char block[64];
    size_t used;
} Sha256;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_compress(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
/* The same compression with the CPU's SHA extensions (about a fifteenth of the instructions), where
 * it has them; module init checks it against the portable one before it is used. */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_compress_ni(uint32_t h[8], const unsigned char *p) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&h[0]);
    __m128i state1 = _mm_loadu_si128((const __m128i *)&h[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);
    state1 = _mm_shuffle_epi32(state1, 0x1B);
    __m128i state0 = _mm_alignr_epi8(tmp, state1, 8); /* ABEF */
    state1 = _mm_blend_epi16(state1, tmp, 0xF0);      /* CDGH */
    const __m128i abef = state0, cdgh = state1;
    __m128i w[16];
    for (int i = 0; i < 4; i++) w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), mask);
    for (int i = 4; i < 16; i++) {
        __m128i t = _mm_sha256msg1_epu32(w[i - 4], w[i - 3]);
        t = _mm_add_epi32(t, _mm_alignr_epi8(w[i - 1], w[i - 2], 4));
        w[i] = _mm_sha256msg2_epu32(t, w[i - 1]);
    }
    for (int i = 0; i < 16; i++) {
        __m128i msg = _mm_add_epi32(w[i], _mm_loadu_si128((const __m128i *)&K256[4 * i]));
        state1 = _mm_sha256rnds2_epu32(state1, state0, msg);
        msg = _mm_shuffle_epi32(msg, 0x0E);
        state0 = _mm_sha256rnds2_epu32(state0, state1, msg);
    }
    state0 = _mm_add_epi32(state0, abef);
    state1 = _mm_add_epi32(state1, cdgh);
    tmp = _mm_shuffle_epi32(state0, 0x1B);
    state1 = _mm_shuffle_epi32(state1, 0xB1);
    state0 = _mm_blend_epi16(tmp, state1, 0xF0);
    state1 = _mm_alignr_epi8(state1, tmp, 8);
    _mm_storeu_si128((__m128i *)&h[0], state0);
    _mm_storeu_si128((__m128i *)&h[4], state1);
}

static int cpu_has_sha(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 29)) != 0;
}
#endif

static void (*compress)(uint32_t h[8], const unsigned char *p) = sha256_compress;

/* Use the CPU's compression if it gives the portable one's answer on a few blocks. */
static void choose_compress(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!cpu_has_sha()) return;
    unsigned char block[64];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 64; i++) block[i] = (unsigned char)(i * 7 + round * 31 + 1);
        uint32_t a[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                         0x5be0cd19};
        uint32_t b[8];
        memcpy(b, a, sizeof(a));
        sha256_compress(a, block);
        sha256_compress_ni(b, block);
        if (memcmp(a, b, sizeof(a)) != 0) return;
    }
    compress = sha256_compress_ni;
#endif
}

static void sha256_init(Sha256 *s) {
    static const uint32_t start[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, start, sizeof(start));
    s->length = 0;
    s->used = 0;
}

static void sha256_update(Sha256 *s, const unsigned char *data, size_t n) {
    s->length += n;
    while (n > 0) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, data, take);
        s->used += take;
        data += take;
        n -= take;
        if (s->used == 64) {
            compress(s->h, s->block);
            s->used = 0;
        }
    }
}

static void sha256_final(Sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->length * 8;
    s->block[s->used++] = 0x80;
    if (s->used > 56) {
        memset(s->block + s->used, 0, 64 - s->used);
        compress(s->h, s->block);
        s->used = 0;
    }
    memset(s->block + s->used, 0, 56 - s->used);
    for (int i = 0; i < 8; i++) s->block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    compress(s->h, s->block);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

/* The key's two pads absorbed (RFC 2104), for the last key seen: the settings' key changes only
 * when the settings are made again (tests do), and is compared on every call. */
static PyObject *pads_key = NULL;
static Sha256 pads_inner, pads_outer;

static int pads_for(PyObject *key) {
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "the pseudonym key is bytes");
        return -1;
    }
    if (pads_key != NULL && (pads_key == key || (PyBytes_GET_SIZE(pads_key) == PyBytes_GET_SIZE(key) &&
                                                 memcmp(PyBytes_AS_STRING(pads_key), PyBytes_AS_STRING(key),
                                                        PyBytes_GET_SIZE(key)) == 0))) {
        Py_SETREF(pads_key, Py_NewRef(key));
        return 0;
    }
    unsigned char block[64] = {0}, ipad[64], opad[64];
    Py_ssize_t size = PyBytes_GET_SIZE(key);
    if (size > 64) {
        Sha256 s;
        sha256_init(&s);
        sha256_update(&s, (const unsigned char *)PyBytes_AS_STRING(key), (size_t)size);
        sha256_final(&s, block);
    } else {
        memcpy(block, PyBytes_AS_STRING(key), (size_t)size);
    }
    for (int i = 0; i < 64; i++) {
        ipad[i] = block[i] ^ 0x36;
        opad[i] = block[i] ^ 0x5c;
    }
    sha256_init(&pads_inner);
    sha256_update(&pads_inner, ipad, 64);
    sha256_init(&pads_outer);
    sha256_update(&pads_outer, opad, 64);
    Py_XSETREF(pads_key, Py_NewRef(key));
    return 0;
}

/* "psn:<kind>:<32 hex>" of `value` under `key`, for a value pseudonymize would strip and upper-case
 * to itself and that is not a pseudonym already; NULL without an error for any other (Python decides). */
static PyObject *fast_pseudonym(PyObject *kind, PyObject *value, PyObject *key) {
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value) || !PyUnicode_CheckExact(kind) ||
        !PyUnicode_IS_ASCII(kind))
        return NULL;
    Py_ssize_t size = PyUnicode_GET_LENGTH(value), ksize = PyUnicode_GET_LENGTH(kind);
    const Py_UCS1 *v = PyUnicode_1BYTE_DATA(value);
    if (size >= 4 && memcmp(v, "psn:", 4) == 0) return NULL;
    for (Py_ssize_t i = 0; i < size; i++)
        if (v[i] >= 'a' && v[i] <= 'z') return NULL;
    if (size > 0 && (Py_UNICODE_ISSPACE(v[0]) || Py_UNICODE_ISSPACE(v[size - 1]))) return NULL;
    if (pads_for(key) < 0) return NULL;
    Sha256 inner = pads_inner, outer = pads_outer;
    unsigned char separator = 0x1f, digest[32];
    sha256_update(&inner, PyUnicode_1BYTE_DATA(kind), (size_t)ksize);
    sha256_update(&inner, &separator, 1);
    sha256_update(&inner, v, (size_t)size);
    sha256_final(&inner, digest);
    sha256_update(&outer, digest, 32);
    sha256_final(&outer, digest);
    PyObject *out = PyUnicode_New(4 + ksize + 1 + 32, 127);
    if (out == NULL) return NULL;
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(out);
    memcpy(o, "psn:", 4);
    memcpy(o + 4, PyUnicode_1BYTE_DATA(kind), (size_t)ksize);
    o[4 + ksize] = ':';
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        o[5 + ksize + 2 * i] = (Py_UCS1)hex[digest[i] >> 4];
        o[5 + ksize + 2 * i + 1] = (Py_UCS1)hex[digest[i] & 15];
    }
    return out;
}

static PyObject *str_pseudonym_key;

static int present_any(PyObject **regs, PyObject *absent, Py_ssize_t n, const int *which) {
    if (n < 0) return 1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = regs[which[k]];
        if (v != NULL && v != absent) return 1;
    }
    return 0;
}

/* BaseModel's other slots: fields_set, no extra, no private. */
static int set_slots(Build *self, PyObject *made, PyObject *fields_set) {
    PyObject *slot_values[4] = {NULL, fields_set, Py_None, Py_None};
    for (int i = 1; i < 4; i++) {
        PyObject *descr = self->setters[i];
        descrsetfunc set = Py_TYPE(descr)->tp_descr_set;
        if (set == NULL || set(descr, made, slot_values[i]) < 0) {
            if (set == NULL) PyErr_SetString(PyExc_TypeError, "slot descriptor without a setter");
            return -1;
        }
    }
    return 0;
}

static PyObject *make_instance(Build *self, PyObject *cls, PyObject *values, PyObject *fields_set) {
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *made = PyBaseObject_Type.tp_new(type, empty_tuple, NULL);
    if (made == NULL) return NULL;
    descrsetfunc set = Py_TYPE(self->setters[0])->tp_descr_set;
    if (set == NULL || set(self->setters[0], made, values) < 0 || set_slots(self, made, fields_set) < 0) {
        if (set == NULL) PyErr_SetString(PyExc_TypeError, "slot descriptor without a setter");
        Py_DECREF(made);
        return NULL;
    }
    return made;
}



static PyObject *run_model(Build *self, Op *op, ModelSpec *spec, PyObject **regs) {
    PyObject *values = spec->attributes ? NULL : _PyDict_NewPresized(spec->nfields);
    PyObject *made = NULL;
    if (spec->attributes && (made = PyBaseObject_Type.tp_new((PyTypeObject *)op->o1, empty_tuple, NULL)) == NULL)
        return NULL;
    PyObject *fields_set = PySet_New(NULL);
    if ((values == NULL && made == NULL) || fields_set == NULL) goto fail;
    for (Py_ssize_t f = 0; f < spec->nfields; f++) {
        Field *fd = &spec->fields[f];
        PyObject *value = NULL; /* new reference */
        int counted = 0;
        if (fd->vkind != V_DEFAULT_ONLY && present_any(regs, self->absent, fd->npresent, fd->present)) {
            counted = 1;
            if (fd->vkind == V_REG) {
                PyObject *held = regs[fd->reg];
                if (held == NULL || held == self->absent) {
                    unsure();
                    goto fail;
                }
                value = Py_NewRef(held);
            } else if (fd->vkind == V_CONST) {
                value = Py_NewRef(fd->value);
            } else {
                value = PyObject_CallNoArgs(fd->value);
            }
        } else if (fd->dkind == V_CONST) {
            value = Py_NewRef(fd->dvalue);
        } else if (fd->dkind == V_FACTORY) {
            value = PyObject_CallNoArgs(fd->dvalue);
        } else {
            unsure();
            goto fail;
        }
        if (value == NULL) goto fail;
        int failed = (made ? PyObject_GenericSetAttr(made, fd->name, value) : PyDict_SetItem(values, fd->name, value)) < 0 ||
                     (counted && PySet_Add(fields_set, fd->name) < 0);
        Py_DECREF(value);
        if (failed) goto fail;
    }
    if (made != NULL) {
        if (set_slots(self, made, fields_set) < 0) goto fail;
    } else {
        made = make_instance(self, op->o1, values, fields_set);
    }
    Py_XDECREF(values);
    Py_DECREF(fields_set);
    return made;
fail:
    Py_XDECREF(made);
    Py_XDECREF(values);
    Py_XDECREF(fields_set);
    return NULL;
}

static PyObject *run_dict(Build *self, Op *op, PyObject **regs) {
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(op->o1);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *entry = PyTuple_GET_ITEM(op->o1, k);
        PyObject *value = regs[PyLong_AsLong(PyTuple_GET_ITEM(entry, 1))];
        if (value == NULL || value == self->absent) continue;
        if (PyDict_SetItem(out, PyTuple_GET_ITEM(entry, 0), value) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    if (op->o2 != Py_None) Py_SETREF(out, PyObject_CallOneArg(op->o2, out));
    return out;
}

/* One value step on regs[a] (absent: skipped). Returns 0, or -1 with an exception set. */
static int run_value_step(Build *self, Op *op, PyObject **slot) {
    PyObject *v = *slot, *out = NULL;
    if (v == NULL) return unsure();
    if (v == self->absent) return 0;
    switch (op->code) {
    case OP_T_CALL:
    case OP_CHK_CALL:
        out = PyObject_CallOneArg(op->o1, v);
        break;
    case OP_CHK_TABLE: {
        PyObject *known = PyUnicode_CheckExact(v) ? PyDict_GetItemWithError(op->o1, v) : NULL;
        if (known == NULL && PyErr_Occurred()) return -1;
        out = known != NULL ? Py_NewRef(known) : PyObject_CallOneArg(op->o2, v);
        break;
    }
    case OP_T_PREFIX:
    case OP_T_SUFFIX: {
        PyObject *text = PyObject_Format(v, empty_str);
        if (text == NULL) return -1;
        out = op->code == OP_T_PREFIX ? PyUnicode_Concat(op->o1, text) : PyUnicode_Concat(text, op->o1);
        Py_DECREF(text);
        break;
    }
    case OP_T_STR:
        out = as_str(v);
        break;
    case OP_T_METHOD: {
        PyObject *text = as_str(v);
        if (text == NULL) return -1;
        out = PyObject_CallMethodNoArgs(text, op->o1);
        Py_DECREF(text);
        break;
    }
    case OP_T_INT:
    case OP_T_FLOAT: {
        PyObject *text = stripped_str(v);
        if (text == NULL) return -1;
        out = op->code == OP_T_INT ? PyLong_FromUnicodeObject(text, 10) : PyFloat_FromString(text);
        Py_DECREF(text);
        break;
    }
    case OP_T_PSEUDO: {
        PyObject *text = as_str(v);
        if (text == NULL) return -1;
        PyObject *settings = PyObject_CallNoArgs(op->o3), *key = NULL;
        if (settings != NULL) {
            key = PyObject_GetAttr(settings, str_pseudonym_key);
            Py_DECREF(settings);
        }
        if (key != NULL) {
            out = fast_pseudonym(op->o1, text, key);
            Py_DECREF(key);
        }
        if (out == NULL && !PyErr_Occurred()) {
            PyObject *call_args[2] = {op->o1, text};
            out = PyObject_Vectorcall(op->o2, call_args, 2, NULL);
        }
        Py_DECREF(text);
        break;
    }
    case OP_T_DATETIME:
        out = fast_datetime(v, op->o1);
        if (out == NULL) {
            PyErr_Clear();
            out = PyObject_CallOneArg(op->o2, v);
        }
        break;
    case OP_T_DIN:
    case OP_T_COI:
        out = op->code == OP_T_DIN ? fast_din(v) : fast_coi(v);
        if (out == NULL) out = PyObject_CallOneArg(op->o2, v);
        break;
    case OP_MAP: {
        PyObject *text = as_str(v);
        if (text == NULL) return -1;
        PyObject *found = PyDict_GetItemWithError(op->o1, text);
        Py_DECREF(text);
        if (found == NULL) return PyErr_Occurred() ? -1 : unsure();
        out = Py_NewRef(found);
        break;
    }
    case OP_PATTERN:
    case OP_ALLOWED: {
        PyObject *text = as_str(v);
        if (text == NULL) return -1;
        int ok;
        if (op->code == OP_ALLOWED) {
            ok = PySet_Contains(op->o1, text);
        } else {
            PyObject *match = PyObject_CallOneArg(op->o1, text);
            ok = match == NULL ? -1 : PyObject_IsTrue(match);
            Py_XDECREF(match);
        }
        Py_DECREF(text);
        if (ok < 0) return -1;
        return ok ? 0 : unsure();
    }
    case OP_TOKENIZE:
        if (v == Py_None) return unsure();
        out = PyObject_CallOneArg(op->o1, v);
        break;
    case OP_CHK_STR: {
        if (v == Py_None && op->b) return 0;
        if (!PyUnicode_CheckExact(v)) return unsure();
        Py_ssize_t size = PyUnicode_GET_LENGTH(v);
        if (op->o1 != Py_None && size < PyLong_AsSsize_t(op->o1)) return unsure();
        if (op->o2 != Py_None && size > PyLong_AsSsize_t(op->o2)) return unsure();
        return 0;
    }
    case OP_CHK_EXACT:
        if (v == Py_None && op->b) return 0;
        return Py_TYPE(v) == (PyTypeObject *)op->o1 ? 0 : unsure();
    case OP_CHK_FLOAT:
        if (v == Py_None && op->b) return 0;
        if (PyFloat_CheckExact(v)) return 0;
        if (!PyLong_CheckExact(v)) return unsure();
        out = PyNumber_Float(v);
        break;
    case OP_CHK_AWARE: {
        if (v == Py_None && op->b) return 0;
        if (Py_TYPE(v) != PyDateTimeAPI->DateTimeType) return unsure();
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(v);
        if (tz == PyDateTime_TimeZone_UTC) return 0;
        if (tz == Py_None) return unsure();
        PyObject *offset = PyObject_CallMethod(v, "utcoffset", NULL);
        if (offset == NULL) return -1;
        int none = offset == Py_None;
        Py_DECREF(offset);
        return none ? unsure() : 0;
    }
    default:
        PyErr_Format(PyExc_ValueError, "unknown step %d", op->code);
        return -1;
    }
    if (out == NULL) return -1;
    Py_SETREF(*slot, out);
    return 0;
}

/* The event from args (record, provenance, received_at). With `slots` (the runner's scan) the
 * record's reads are there instead: OP_READ step i takes slots[read_slots[i]] (NULL: None), and
 * OP_HOLD has nothing to do (the runner checked that no other step uses what it holds). */
static PyObject *build_run(Build *self, PyObject *const *args, PyObject *const *slots, const int *read_slots) {
    PyObject *stack[64];
    PyObject **regs = self->nregs <= 64 ? stack : PyMem_Calloc(self->nregs, sizeof(PyObject *));
    if (regs == NULL) return PyErr_NoMemory();
    memset(regs, 0, sizeof(PyObject *) * self->nregs);
    for (int i = 0; i < 3; i++) regs[i] = Py_NewRef(args[i]);
    PyObject *result = NULL;
    PyObject *record = args[0];
    for (Py_ssize_t i = 0; i < self->nops; i++) {
        Op *op = &self->ops[i];
        PyObject **slot = &regs[op->a];
        switch (op->code) {
        case OP_HOLD:
        case OP_READ: {
            if (slots != NULL) {
                if (op->code == OP_READ) {
                    PyObject *found = slots[read_slots[i]];
                    Py_XSETREF(*slot, Py_NewRef(found ? found : Py_None));
                }
                break;
            }
            PyObject *holder = regs[op->b];
            PyObject *found = NULL;
            if (holder == NULL) {
                unsure();
                goto done;
            }
            if (PyDict_CheckExact(holder)) {
                found = PyDict_GetItemWithError(holder, op->o1);
                if (found == NULL && PyErr_Occurred()) goto done;
            } else if (holder != Py_None || op->b == 0) {
                unsure(); /* a record that is not a plain dict: the reference reads it */
                goto done;
            }
            if (op->code == OP_HOLD && (found == NULL || !PyDict_Check(found))) found = Py_None;
            if (op->code == OP_HOLD && found != Py_None && !PyDict_CheckExact(found)) {
                unsure();
                goto done;
            }
            Py_XSETREF(*slot, Py_NewRef(found ? found : Py_None));
            break;
        }
        case OP_CALLREAD: {
            PyObject *out = PyObject_CallOneArg(op->o1, record);
            if (out == NULL) goto done;
            Py_XSETREF(*slot, out);
            break;
        }
        case OP_CONST:
            Py_XSETREF(*slot, Py_NewRef(op->o1));
            break;
        case OP_EMPTY: {
            if (*slot == NULL) {
                unsure();
                goto done;
            }
            int empty = is_empty(*slot);
            if (empty < 0) goto done;
            if (empty) {
                if (op->b == 1) {
                    unsure();
                    goto done;
                }
                Py_SETREF(*slot, Py_NewRef(op->b == 0 ? self->absent : op->o1));
            }
            break;
        }
        case OP_DICT:
        case OP_MODEL: {
            PyObject *out = NULL;
            if (present_any(regs, self->absent, op->npresent, op->present)) {
                out = op->code == OP_DICT ? run_dict(self, op, regs) : run_model(self, op, &self->models[i], regs);
                if (out == NULL) goto done;
            }
            Py_XSETREF(*slot, out);
            break;
        }
        case OP_RETURN:
            if (*slot == NULL) {
                unsure();
                goto done;
            }
            result = Py_NewRef(*slot);
            goto done;
        default:
            if (run_value_step(self, op, slot) < 0) goto done;
        }
    }
done:
    for (int i = 0; i < self->nregs; i++) Py_XDECREF(regs[i]);
    if (regs != stack) PyMem_Free(regs);
    return result;
}

static PyObject *build_call(Build *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) != 3 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "build(record, provenance, received_at)");
        return NULL;
    }
    return build_run(self, args, NULL, NULL);
}

static PyObject *build_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    return build_call((Build *)callable, args, nargsf, kwnames);
}

static PyObject *build_tp_call(PyObject *callable, PyObject *args, PyObject *kwargs) {
    return PyVectorcall_Call(callable, args, kwargs);
}

static PyObject *build_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Build *self = (Build *)type->tp_alloc(type, 0);
    if (self != NULL) *(vectorcallfunc *)((char *)self + type->tp_vectorcall_offset) = build_vectorcall;
    return (PyObject *)self;
}

typedef struct {
    Build base;
    vectorcallfunc vectorcall;
} BuildWithCall;

static PyTypeObject BuildType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cgthub.mapping._vm.Build",
    .tp_basicsize = sizeof(BuildWithCall),
    .tp_dealloc = (destructor)build_dealloc,
    .tp_vectorcall_offset = offsetof(BuildWithCall, vectorcall),
    .tp_call = build_tp_call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Build(ops, nregs, absent, setters): a mapping rule's event builder, run as plan steps.",
    .tp_init = (initproc)build_init,
    .tp_new = build_new,
};

/* ---- the parts of a JSON record the rules read ------------------------------------------- */
/* A record's rules read a few dotted paths; decoding the whole object (orjson.loads), looking the
 * paths up in it and freeing it was a third of a record's cost. This scanner checks the whole
 * payload against the JSON grammar (RFC 8259) and makes Python objects only for the values read,
 * each into its slot: what a build's chain of dict reads (OP_HOLD, OP_READ) would find in orjson's
 * dict, with no dict made. It decides only what it is sure of (plain objects, arrays,
 * strings in valid UTF-8 with escapes outside the surrogates, numbers of at most 18 characters
 * without an exponent, nesting to 128); anything else answers "unsure", and orjson.loads decodes
 * the payload as before (and words the error where there is one). tests/test_mapping_native.py
 * holds it to orjson's answer on generated and broken documents. */

#define PATH_BUCKETS 32

typedef struct PathNode {
    PyObject *key;                /* str: a key on the path (the root has none) */
    const char *utf8;             /* its UTF-8, which a key without escapes in the payload equals */
    Py_ssize_t len;
    int whole;                    /* this value is read itself: decoded whole, children or not */
    Py_ssize_t nchildren;
    struct PathNode *children;
    int slot;                     /* where a whole value goes (-1: not read itself) */
    int first, last;              /* the slots of this node and all below it: [first, last) */
    int next;                     /* the next sibling in its bucket, + 1 (0: none) */
    int buckets[PATH_BUCKETS];    /* the first child in each bucket of key_bucket, + 1 */
} PathNode;

static inline int key_bucket(const unsigned char *key, Py_ssize_t len) {
    return len ? (int)((len * 7 + key[0] * 3 + key[len - 1]) & (PATH_BUCKETS - 1)) : 0;
}

/* The child of `node` for the key with these bytes, or NULL. */
static inline const PathNode *path_child(const PathNode *node, const unsigned char *key, Py_ssize_t len) {
    for (int k = node->buckets[key_bucket(key, len)]; k; k = node->children[k - 1].next) {
        const PathNode *c = &node->children[k - 1];
        if (c->len == len && memcmp(c->utf8, key, len) == 0) return c;
    }
    return NULL;
}

static void path_free(PathNode *node) {
    for (Py_ssize_t i = 0; i < node->nchildren; i++) path_free(&node->children[i]);
    PyMem_Free(node->children);
    Py_XDECREF(node->key);
    node->children = NULL;
    node->nchildren = 0;
    node->key = NULL;
}

/* Adds the path `keys[0..n)` under `root`; -1 with an error set. */
static int path_add(PathNode *root, PyObject *const *keys, Py_ssize_t n) {
    PathNode *node = root;
    for (Py_ssize_t depth = 0; depth < n; depth++) {
        PyObject *key = keys[depth];
        if (!PyUnicode_CheckExact(key)) {
            PyErr_SetString(PyExc_TypeError, "a path's keys are str");
            return -1;
        }
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &len);
        if (utf8 == NULL) return -1;
        PathNode *next = (PathNode *)path_child(node, (const unsigned char *)utf8, len);
        if (next == NULL) {
            PathNode *grown = PyMem_Realloc(node->children, sizeof(PathNode) * (node->nchildren + 1));
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            node->children = grown;
            next = &grown[node->nchildren++];
            memset(next, 0, sizeof(PathNode));
            next->key = Py_NewRef(key);
            next->utf8 = utf8; /* the str keeps its UTF-8 as long as it lives, and the node holds it */
            next->len = len;
            int bucket = key_bucket((const unsigned char *)utf8, len);
            next->next = node->buckets[bucket];
            node->buckets[bucket] = (int)node->nchildren;
        }
        node = next;
    }
    if (node != root) node->whole = 1;
    return 0;
}

/* Slots for the nodes read whole, depth first (so a node's and its descendants' are one range). */
static void path_number(PathNode *node, int *next) {
    node->first = *next;
    node->slot = node->whole ? (*next)++ : -1;
    for (Py_ssize_t i = 0; i < node->nchildren; i++) path_number(&node->children[i], next);
    node->last = *next;
}

/* The slot of the path `keys` (a tuple of str) under `root`, or -1 where it is not read whole. */
static int path_slot(const PathNode *root, PyObject *keys) {
    const PathNode *node = root;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys) && node != NULL; i++) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(keys, i), &len);
        if (utf8 == NULL) return -1;
        node = path_child(node, (const unsigned char *)utf8, len);
    }
    return node != NULL && node != root ? node->slot : -1;
}

/* The paths under `node` as tuples of keys, into `out` (a list); `prefix` a tuple. */
static int path_list(const PathNode *node, PyObject *prefix, PyObject *out) {
    for (Py_ssize_t i = 0; i < node->nchildren; i++) {
        const PathNode *child = &node->children[i];
        Py_ssize_t n = PyTuple_GET_SIZE(prefix);
        PyObject *path = PyTuple_New(n + 1);
        if (path == NULL) return -1;
        for (Py_ssize_t k = 0; k < n; k++) PyTuple_SET_ITEM(path, k, Py_NewRef(PyTuple_GET_ITEM(prefix, k)));
        PyTuple_SET_ITEM(path, n, Py_NewRef(child->key));
        int failed = (child->whole && PyList_Append(out, path) < 0) || path_list(child, path, out) < 0;
        Py_DECREF(path);
        if (failed) return -1;
    }
    return 0;
}

enum { SCAN_SKIP = 0, SCAN_WHOLE = 1, SCAN_SLOTS = 2 };
#define SCAN_DEPTH 128
#define SCAN_NUMBER 18

typedef struct {
    const unsigned char *p, *end;
    int depth;
    PyObject **slots; /* SCAN_SLOTS: the values read, by PathNode.slot (NULL: absent, read as None) */
} Scan;

static void clear_slots(PyObject **slots, int first, int last) {
    for (int i = first; i < last; i++) Py_CLEAR(slots[i]);
}

/* The slots below `node` from its value, decoded whole: what the chained reads find in it. */
static void fill_slots(Scan *s, const PathNode *node, PyObject *value) {
    for (Py_ssize_t i = 0; i < node->nchildren; i++) {
        const PathNode *child = &node->children[i];
        PyObject *found = value != NULL && PyDict_CheckExact(value) ? PyDict_GetItem(value, child->key) : NULL;
        if (child->slot >= 0) Py_XSETREF(s->slots[child->slot], Py_XNewRef(found));
        fill_slots(s, child, found);
    }
}

/* Bytes that stand for themselves in a JSON string: printable ASCII but '"' and '\\'. */
static unsigned char plain_byte[256];

/* JSON's white space: space, tab, line feed, carriage return. */
static unsigned char space_byte[256];

static void scan_init(void) {
    for (int c = 0x20; c < 0x80; c++) plain_byte[c] = c != '"' && c != '\\';
    space_byte[' '] = space_byte['\t'] = space_byte['\n'] = space_byte['\r'] = 1;
}

static inline void skip_space(Scan *s) {
    while (s->p < s->end && space_byte[*s->p]) s->p++;
}

/* The first byte from p on that is not plain (plain_byte), or end: sixteen at a time where SSE2 is. */
static inline const unsigned char *plain_run(const unsigned char *p, const unsigned char *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        /* signed: bytes from 0x80 on are below the space too, and stop the run as controls do */
        __m128i stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                    _mm_cmplt_epi8(v, space));
        int mask = _mm_movemask_epi8(stop);
        if (mask) return p + __builtin_ctz(mask);
        p += 16;
    }
#endif
    while (p < end && plain_byte[*p]) p++;
    return p;
}

/* The length of the UTF-8 sequence at p (a byte >= 0x80), or 0 where it is not one Python decodes. */
static int utf8_length(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    int n;
    unsigned char low = 0x80, high = 0xBF;
    if (c < 0xC2) return 0;
    if (c < 0xE0) n = 2;
    else if (c < 0xF0) {
        n = 3;
        if (c == 0xE0) low = 0xA0;
        if (c == 0xED) high = 0x9F; /* no surrogates */
    } else if (c < 0xF5) {
        n = 4;
        if (c == 0xF0) low = 0x90;
        if (c == 0xF4) high = 0x8F;
    } else
        return 0;
    if (end - p < n || p[1] < low || p[1] > high) return 0;
    for (int i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string at s->p (its opening quote), any that JSON allows but surrogate escapes; *out its str
 * where out is given, *raw its bytes where they are its text (no escapes). 0, or -1: unsure. */
static int scan_string_any(Scan *s, PyObject **out, const unsigned char **raw, Py_ssize_t *rawlen) {
    const unsigned char *start = ++s->p, *end = s->end;
    int escaped = 0, wide = 0;
    for (;;) {
        s->p = plain_run(s->p, end);
        if (s->p >= end) return -1;
        unsigned char c = *s->p;
        if (c == '"') break;
        if (c == '\\') {
            if (end - s->p < 2) return -1;
            unsigned char e = s->p[1];
            if (e == 'u') {
                if (end - s->p < 6) return -1;
                int code = 0;
                for (int i = 2; i < 6; i++) {
                    int h = hex_value(s->p[i]);
                    if (h < 0) return -1;
                    code = code * 16 + h;
                }
                if (code >= 0xD800 && code <= 0xDFFF) return -1; /* pairs and lone halves: orjson's call */
                s->p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                s->p += 2;
            } else
                return -1;
            escaped = 1;
        } else if (c < 0x20) {
            return -1;
        } else {
            int n = utf8_length(s->p, end);
            if (n == 0) return -1;
            s->p += n;
            wide = 1;
        }
    }
    Py_ssize_t len = s->p - start;
    s->p++; /* the closing quote */
    if (raw != NULL) {
        *raw = escaped ? NULL : start;
        *rawlen = len;
    }
    if (out == NULL) return 0;
    if (!escaped && !wide) {
        PyObject *text = PyUnicode_New(len, 127);
        if (text == NULL) return -1;
        memcpy(PyUnicode_DATA(text), start, len);
        *out = text;
        return 0;
    }
    if (!escaped) {
        *out = PyUnicode_DecodeUTF8((const char *)start, len, "strict");
        return *out ? 0 : -1;
    }
    /* Escapes: decoded into UTF-8 first (never longer than what they stand for), then to str. */
    unsigned char *buf = PyMem_Malloc(len ? len : 1), *w = buf;
    if (buf == NULL) return -1;
    for (const unsigned char *r = start; r < start + len;) {
        if (*r != '\\') {
            *w++ = *r++;
            continue;
        }
        unsigned char e = r[1];
        r += 2;
        switch (e) {
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            int code = (hex_value(r[0]) << 12) | (hex_value(r[1]) << 8) | (hex_value(r[2]) << 4) | hex_value(r[3]);
            r += 4;
            if (code < 0x80) {
                *w++ = (unsigned char)code;
            } else if (code < 0x800) {
                *w++ = (unsigned char)(0xC0 | (code >> 6));
                *w++ = (unsigned char)(0x80 | (code & 0x3F));
            } else {
                *w++ = (unsigned char)(0xE0 | (code >> 12));
                *w++ = (unsigned char)(0x80 | ((code >> 6) & 0x3F));
                *w++ = (unsigned char)(0x80 | (code & 0x3F));
            }
            break;
        }
        default: *w++ = e; /* '"', '\\', '/' */
        }
    }
    *out = PyUnicode_DecodeUTF8((const char *)buf, w - buf, "strict");
    PyMem_Free(buf);
    return *out ? 0 : -1;
}

/* scan_string_any for the usual string, printable ASCII without escapes, without a call. */
static inline int scan_string(Scan *s, PyObject **out, const unsigned char **raw, Py_ssize_t *rawlen) {
    const unsigned char *start = s->p + 1, *stop = plain_run(start, s->end);
    if (stop >= s->end || *stop != '"') return scan_string_any(s, out, raw, rawlen);
    Py_ssize_t len = stop - start;
    s->p = stop + 1;
    if (raw != NULL) {
        *raw = start;
        *rawlen = len;
    }
    if (out == NULL) return 0;
    PyObject *text = PyUnicode_New(len, 127);
    if (text == NULL) return -1;
    memcpy(PyUnicode_DATA(text), start, len);
    *out = text;
    return 0;
}

static int scan_number(Scan *s, PyObject **out) {
    const unsigned char *start = s->p, *end = s->end;
    int fraction = 0;
    if (s->p < end && *s->p == '-') s->p++;
    if (s->p < end && *s->p == '0') {
        s->p++;
    } else {
        if (s->p >= end || *s->p < '1' || *s->p > '9') return -1;
        while (s->p < end && *s->p >= '0' && *s->p <= '9') s->p++;
    }
    if (s->p < end && *s->p == '.') {
        s->p++;
        if (s->p >= end || *s->p < '0' || *s->p > '9') return -1;
        while (s->p < end && *s->p >= '0' && *s->p <= '9') s->p++;
        fraction = 1;
    }
    if (s->p < end && (*s->p == 'e' || *s->p == 'E')) return -1;
    Py_ssize_t len = s->p - start;
    if (len > SCAN_NUMBER) return -1; /* past int64 or a double's digits: orjson's call */
    if (out == NULL) return 0;
    char text[SCAN_NUMBER + 1];
    memcpy(text, start, len);
    text[len] = '\0';
    if (fraction) {
        double value = PyOS_string_to_double(text, NULL, NULL);
        if (value == -1.0 && PyErr_Occurred()) return -1;
        *out = PyFloat_FromDouble(value);
    } else {
        *out = PyLong_FromString(text, NULL, 10);
    }
    return *out ? 0 : -1;
}

static int scan_literal(Scan *s, const char *word, Py_ssize_t len, PyObject *value, PyObject **out) {
    if (s->end - s->p < len || memcmp(s->p, word, len) != 0) return -1;
    s->p += len;
    if (out != NULL) *out = Py_NewRef(value);
    return 0;
}

static int scan_value(Scan *s, int mode, PyObject **out);

/* After an object's member or an array's item: 1 where a comma says another follows (white space
 * after it skipped), 0 where `close` ends it, -1 (unsure) otherwise. */
static inline int next_member(Scan *s, unsigned char close) {
    skip_space(s);
    if (s->p < s->end && *s->p == ',') {
        s->p++;
        skip_space(s);
        return 1;
    }
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    return -1;
}

/* An object at s->p: skipped, decoded whole, or read into the slots of the paths under `node`
 * (SCAN_SLOTS; `out` unused). A key met again counts last, as in orjson's dict: the slots below
 * it are cleared before it is read again. */
static int scan_object(Scan *s, int mode, const PathNode *node, PyObject **out) {
    if (++s->depth > SCAN_DEPTH) return -1;
    s->p++;
    PyObject *dict = NULL;
    if (mode == SCAN_WHOLE && (dict = PyDict_New()) == NULL) return -1;
    if (mode == SCAN_SLOTS) clear_slots(s->slots, node->first, node->last);
    skip_space(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        goto closed;
    }
    for (;;) {
        if (s->p >= s->end || *s->p != '"') goto unsure;
        PyObject *key = NULL, *value = NULL;
        const unsigned char *raw;
        Py_ssize_t rawlen;
        if (scan_string(s, mode == SCAN_WHOLE ? &key : NULL, &raw, &rawlen) < 0) goto unsure;
        const PathNode *child = NULL;
        if (mode == SCAN_SLOTS) {
            if (raw == NULL) goto unsure; /* an escaped key: orjson compares it */
            child = path_child(node, raw, rawlen);
        }
        skip_space(s);
        if (s->p >= s->end || *s->p != ':') {
            Py_XDECREF(key);
            goto unsure;
        }
        s->p++;
        int step;
        if (mode == SCAN_WHOLE) {
            step = scan_value(s, SCAN_WHOLE, &value);
        } else if (child == NULL) {
            step = scan_value(s, SCAN_SKIP, NULL);
        } else if (child->slot >= 0) { /* read itself: decoded whole; paths below it read from that */
            step = scan_value(s, SCAN_WHOLE, &value);
            if (step == 0) {
                fill_slots(s, child, value);
                Py_XSETREF(s->slots[child->slot], value);
                value = NULL;
            }
        } else {
            skip_space(s);
            if (s->p < s->end && *s->p == '{') {
                step = scan_object(s, SCAN_SLOTS, child, NULL);
            } else { /* not an object: every read below it finds None */
                step = scan_value(s, SCAN_SKIP, NULL);
                clear_slots(s->slots, child->first, child->last);
            }
        }
        if (step < 0) {
            Py_XDECREF(key);
            goto unsure;
        }
        if (value != NULL) { /* a repeated key: the last one counts, as in orjson's dict */
            int failed = PyDict_SetItem(dict, key, value);
            Py_DECREF(key);
            Py_DECREF(value);
            if (failed) goto unsure;
        }
        int more = next_member(s, '}');
        if (more < 0) goto unsure;
        if (!more) break;
    }
closed:
    s->depth--;
    if (out != NULL) *out = dict;
    return 0;
unsure:
    Py_XDECREF(dict);
    return -1;
}

static int scan_array(Scan *s, int mode, PyObject **out) {
    if (++s->depth > SCAN_DEPTH) return -1;
    s->p++;
    PyObject *list = NULL;
    if (mode != SCAN_SKIP && (list = PyList_New(0)) == NULL) return -1;
    skip_space(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        goto closed;
    }
    for (;;) {
        PyObject *item = NULL;
        if (scan_value(s, mode, list ? &item : NULL) < 0) goto unsure;
        if (item != NULL) {
            int failed = PyList_Append(list, item);
            Py_DECREF(item);
            if (failed) goto unsure;
        }
        int more = next_member(s, ']');
        if (more < 0) goto unsure;
        if (!more) break;
    }
closed:
    s->depth--;
    if (out != NULL) *out = list;
    return 0;
unsure:
    Py_XDECREF(list);
    return -1;
}

/* A value after optional white space, skipped or decoded whole (scan_object reads into slots). */
static int scan_value(Scan *s, int mode, PyObject **out) {
    skip_space(s);
    if (s->p >= s->end) return -1;
    PyObject **into = mode == SCAN_SKIP ? NULL : out;
    switch (*s->p) {
    case '{': return scan_object(s, mode, NULL, into);
    case '[': return scan_array(s, mode == SCAN_SKIP ? SCAN_SKIP : SCAN_WHOLE, into);
    case '"': return scan_string(s, into, NULL, NULL);
    case 't': return scan_literal(s, "true", 4, Py_True, into);
    case 'f': return scan_literal(s, "false", 5, Py_False, into);
    case 'n': return scan_literal(s, "null", 4, Py_None, into);
    default: return scan_number(s, into);
    }
}

/* The values the paths under `root` (numbered) read in `payload` (bytes), into `slots` (all NULL
 * before): 0, or -1 (unsure; no error set, the slots cleared) where orjson.loads is to decode it. */
static int scan_record(const PathNode *root, PyObject *payload, PyObject **slots) {
    Scan s = {(const unsigned char *)PyBytes_AS_STRING(payload),
              (const unsigned char *)PyBytes_AS_STRING(payload) + PyBytes_GET_SIZE(payload), 0, slots};
    skip_space(&s);
    if (s.p >= s.end || *s.p != '{' || scan_object(&s, SCAN_SLOTS, root, NULL) < 0) goto unsure;
    skip_space(&s);
    if (s.p != s.end) goto unsure;
    return 0;
unsure:
    clear_slots(slots, root->first, root->last);
    PyErr_Clear();
    return -1;
}

/* Adds to `root` the paths a build reads, from its steps, and to `reads` (a list) each OP_READ's
 * path (None for the other steps): 1, or 0 where the build reads the record other than along
 * dotted paths (a getter's call; a step or an event field given a register that holds one of the
 * record's objects), and the record is then decoded whole; -1 with an error set. */
static int paths_of_build(PathNode *root, Build *build, PyObject *reads) {
    int answer = 0;
    PyObject **held = PyMem_Calloc(build->nregs, sizeof(PyObject *)); /* the path to the object a register holds */
    if (held == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    held[0] = Py_NewRef(empty_tuple);
    for (Py_ssize_t i = 0; i < build->nops; i++) {
        Op *op = &build->ops[i];
        if (op->code == OP_CALLREAD || held[op->a] != NULL) goto done;
        if (op->code != OP_READ && PyList_Append(reads, Py_None) < 0) goto failed;
        if (op->code == OP_HOLD || op->code == OP_READ) {
            PyObject *base = held[op->b];
            if (base == NULL) goto done;
            Py_ssize_t n = PyTuple_GET_SIZE(base);
            PyObject *path = PyTuple_New(n + 1);
            if (path == NULL) goto failed;
            for (Py_ssize_t k = 0; k < n; k++) PyTuple_SET_ITEM(path, k, Py_NewRef(PyTuple_GET_ITEM(base, k)));
            PyTuple_SET_ITEM(path, n, Py_NewRef(op->o1));
            if (op->code == OP_HOLD) {
                held[op->a] = path;
                continue;
            }
            int broke = path_add(root, &PyTuple_GET_ITEM(path, 0), n + 1) < 0 || PyList_Append(reads, path) < 0;
            Py_DECREF(path);
            if (broke) goto failed;
        } else if (op->code == OP_DICT) {
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(op->o1); k++)
                if (held[PyLong_AsLong(PyTuple_GET_ITEM(PyTuple_GET_ITEM(op->o1, k), 1))] != NULL) goto done;
        } else if (op->code == OP_MODEL) {
            ModelSpec *spec = &build->models[i];
            for (Py_ssize_t f = 0; f < spec->nfields; f++)
            {
                Field *fd = &spec->fields[f];
                if (fd->vkind == V_REG && held[fd->reg] != NULL) goto done;
                for (Py_ssize_t k = 0; k < fd->npresent; k++)
                    if (held[fd->present[k]] != NULL) goto done;
            }
        }
        for (Py_ssize_t k = 0; k < op->npresent; k++)
            if (held[op->present[k]] != NULL) goto done;
    }
    answer = 1;
    goto done;
failed:
    answer = -1;
done:
    for (int r = 0; r < build->nregs; r++) Py_XDECREF(held[r]);
    PyMem_Free(held);
    return answer;
}

/* ---- a JSON payload of one record, whole: decode, provenance, conditions, builds ----------- */
/* What CompiledMapping.map does for the usual payload, without its Python frame: None (not an
 * error) wherever that method has more to decide (not one plain object, a condition or build that
 * is unsure, no rule holds), and it then runs as before. */

enum { C_EXISTS = 0, C_EQUALS = 1, C_IN = 2, C_NOT_IN = 3 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *loads, *provenance_model, *provenance_names, *mapping_id, *version, *conditions, *builds;
    int scans;         /* the record is read along `paths` (scan_record), orjson.loads where that is unsure */
    PathNode paths;    /* what the conditions and builds read, numbered */
    int nslots;
    int **read_slots;  /* for each build, the slot of each of its OP_READ steps */
    int *cond_slots;   /* the slot of each condition, event by event */
} Runner;

#define RUNNER_SLOTS 256

static void runner_dealloc(Runner *self) {
    Py_XDECREF(self->loads);
    Py_XDECREF(self->provenance_model);
    Py_XDECREF(self->provenance_names);
    Py_XDECREF(self->mapping_id);
    Py_XDECREF(self->version);
    Py_XDECREF(self->conditions);
    if (self->read_slots != NULL)
        for (Py_ssize_t e = 0; e < PyTuple_GET_SIZE(self->builds); e++) PyMem_Free(self->read_slots[e]);
    Py_XDECREF(self->builds);
    PyMem_Free(self->read_slots);
    PyMem_Free(self->cond_slots);
    path_free(&self->paths);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A condition's value: a dotted path through plain dicts (None past a non-object), or a getter's.
 * Returns a new reference, or NULL: with an error set, or without one where Python decides. */
static PyObject *condition_value(PyObject *record, PyObject *keys, PyObject *getter) {
    if (getter != Py_None) return PyObject_CallOneArg(getter, record);
    PyObject *node = record;
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyDict_CheckExact(node)) {
            if (PyDict_Check(node)) return NULL;
            return Py_NewRef(Py_None);
        }
        node = PyDict_GetItemWithError(node, PyTuple_GET_ITEM(keys, i));
        if (node == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    return Py_NewRef(node);
}

/* One condition, as codegen.generate_selector writes it: 1 holds, 0 not, -1 error or unsure. */
static int condition_holds(PyObject *value, int kind, PyObject *operand) {
    if (kind == C_EXISTS) {
        int there = value != Py_None;
        if (there) {
            if (PyUnicode_CheckExact(value)) {
                there = PyUnicode_GET_LENGTH(value) != 0;
            } else {
                int differs = PyObject_RichCompareBool(value, empty_str, Py_NE);
                if (differs < 0) return -1;
                there = differs;
            }
        }
        return there == PyObject_IsTrue(operand);
    }
    PyObject *text = as_str(value);
    if (text == NULL) return -1;
    int answer;
    if (kind == C_EQUALS) {
        answer = PyUnicode_Compare(text, operand) == 0;
        if (answer == 0 && PyErr_Occurred()) answer = -1;
    } else {
        answer = PySet_Contains(operand, text);
        if (answer >= 0 && kind == C_NOT_IN) answer = !answer;
    }
    Py_DECREF(text);
    return answer;
}

static PyObject *runner_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Runner *self = (Runner *)callable;
    if (PyVectorcall_NARGS(nargsf) != 4 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "run(payload, raw_id, checksum, received_at)");
        return NULL;
    }
    PyObject *payload = args[0], *raw_id = args[1], *checksum = args[2], *received_at = args[3];
    if (!(raw_id == Py_None || PyLong_CheckExact(raw_id)) || !(checksum == Py_None || PyUnicode_CheckExact(checksum)))
        Py_RETURN_NONE; /* pydantic words what is wrong with them */
    PyObject *slots_here[RUNNER_SLOTS];
    PyObject **slots = NULL, *record = NULL; /* the scan's slots, or orjson's dict */
    if (self->scans && PyBytes_CheckExact(payload)) {
        memset(slots_here, 0, sizeof(PyObject *) * self->nslots);
        if (scan_record(&self->paths, payload, slots_here) == 0) slots = slots_here;
    }
    if (slots == NULL && (record = PyObject_CallOneArg(self->loads, payload)) == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *out = NULL, *provenance = NULL, *values = NULL, *fields_set = NULL;
    if (slots == NULL && !PyDict_CheckExact(record)) goto hand_over;
    int condition = 0;
    Py_ssize_t nevents = PyTuple_GET_SIZE(self->builds);
    int chosen[64], any = 0;
    if (nevents > 64) goto hand_over;
    for (Py_ssize_t e = 0; e < nevents; e++) {
        PyObject *conds = PyTuple_GET_ITEM(self->conditions, e);
        int holds = 1;
        for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(conds); c++) {
            PyObject *cond = PyTuple_GET_ITEM(conds, c), *value;
            if (slots != NULL) {
                PyObject *found = slots[self->cond_slots[condition++]];
                value = Py_NewRef(found ? found : Py_None);
            } else {
                value = condition_value(record, PyTuple_GET_ITEM(cond, 0), PyTuple_GET_ITEM(cond, 1));
            }
            if (value == NULL) goto hand_over;
            int answer = condition_holds(value, (int)PyLong_AsLong(PyTuple_GET_ITEM(cond, 2)), PyTuple_GET_ITEM(cond, 3));
            Py_DECREF(value);
            if (answer < 0) goto hand_over;
            holds &= answer; /* every condition is evaluated, as the selector does */
        }
        chosen[e] = holds;
        any |= holds;
    }
    if (!any) goto hand_over; /* no rule holds: map decides whether that is a rejection */
    /* The payload's provenance, shared by its events (it is frozen), as compiler._provenance makes it. */
    values = _PyDict_NewPresized(4);
    fields_set = PySet_New(self->provenance_names);
    if (values == NULL || fields_set == NULL) goto hand_over;
    PyObject *parts[4] = {self->mapping_id, self->version, raw_id, checksum};
    for (int i = 0; i < 4; i++)
        if (PyDict_SetItem(values, PyTuple_GET_ITEM(self->provenance_names, i), parts[i]) < 0) goto hand_over;
    /* Any build's slot setters are BaseModel's, which Provenance's are too (native.runner checks). */
    provenance = make_instance((Build *)PyTuple_GET_ITEM(self->builds, 0), self->provenance_model, values, fields_set);
    if (provenance == NULL) goto hand_over;
    out = PyList_New(0);
    if (out == NULL) goto hand_over;
    for (Py_ssize_t e = 0; e < nevents; e++) {
        if (!chosen[e]) continue;
        PyObject *build_args[3] = {slots ? Py_None : record, provenance, received_at};
        PyObject *made = build_run((Build *)PyTuple_GET_ITEM(self->builds, e), build_args, slots,
                                   slots ? self->read_slots[e] : NULL);
        if (made == NULL) goto hand_over;
        int failed = PyList_Append(out, made);
        Py_DECREF(made);
        if (failed) goto hand_over;
    }
    Py_XDECREF(record);
    if (slots != NULL) clear_slots(slots, 0, self->nslots);
    Py_DECREF(provenance);
    Py_DECREF(values);
    Py_DECREF(fields_set);
    return out;
hand_over:
    PyErr_Clear();
    Py_XDECREF(record);
    if (slots != NULL) clear_slots(slots, 0, self->nslots);
    Py_XDECREF(out);
    Py_XDECREF(provenance);
    Py_XDECREF(values);
    Py_XDECREF(fields_set);
    Py_RETURN_NONE;
}

/* Each OP_READ step's and each condition's slot, from the paths (numbered) they read. */
static int runner_slots(Runner *self, PyObject *reads) {
    Py_ssize_t n = PyTuple_GET_SIZE(self->builds), at = 0, nconds = 0;
    for (Py_ssize_t e = 0; e < n; e++) nconds += PyTuple_GET_SIZE(PyTuple_GET_ITEM(self->conditions, e));
    self->read_slots = PyMem_Calloc(n, sizeof(int *));
    self->cond_slots = PyMem_Calloc(nconds ? nconds : 1, sizeof(int));
    if (self->read_slots == NULL || self->cond_slots == NULL) goto no_memory;
    for (Py_ssize_t e = 0, c = 0; e < n; e++) {
        PyObject *conds = PyTuple_GET_ITEM(self->conditions, e);
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(conds); k++)
            self->cond_slots[c++] = path_slot(&self->paths, PyTuple_GET_ITEM(PyTuple_GET_ITEM(conds, k), 0));
        Build *build = (Build *)PyTuple_GET_ITEM(self->builds, e);
        if ((self->read_slots[e] = PyMem_Calloc(build->nops ? build->nops : 1, sizeof(int))) == NULL) goto no_memory;
        for (Py_ssize_t i = 0; i < build->nops; i++, at++) {
            PyObject *path = PyList_GET_ITEM(reads, at);
            self->read_slots[e][i] = path == Py_None ? -1 : path_slot(&self->paths, path);
        }
    }
    for (Py_ssize_t c = 0; c < nconds; c++)
        if (self->cond_slots[c] < 0) goto lost;
    for (Py_ssize_t e = 0; e < n; e++) {
        Build *build = (Build *)PyTuple_GET_ITEM(self->builds, e);
        for (Py_ssize_t i = 0; i < build->nops; i++)
            if (build->ops[i].code == OP_READ && self->read_slots[e][i] < 0) goto lost;
    }
    return 0;
lost:
    PyErr_SetString(PyExc_SystemError, "a read without its slot");
    return -1;
no_memory:
    PyErr_NoMemory();
    return -1;
}

static PyObject *runner_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"loads", "provenance_model", "provenance_names", "mapping_id", "version",
                             "conditions", "builds", NULL};
    PyObject *loads, *model, *names, *mapping_id, *version, *conditions, *builds;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!UUO!O!", kwlist, &loads, &PyType_Type, &model, &PyTuple_Type,
                                     &names, &mapping_id, &version, &PyTuple_Type, &conditions, &PyTuple_Type, &builds))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(builds);
    if (n == 0 || n > 64 || PyTuple_GET_SIZE(conditions) != n || PyTuple_GET_SIZE(names) != 4) {
        PyErr_SetString(PyExc_ValueError, "one to 64 builds, a tuple of conditions for each, four provenance names");
        return NULL;
    }
    for (Py_ssize_t e = 0; e < n; e++) {
        if (Py_TYPE(PyTuple_GET_ITEM(builds, e)) != &BuildType) {
            PyErr_SetString(PyExc_TypeError, "builds: Build instances");
            return NULL;
        }
        PyObject *conds = PyTuple_GET_ITEM(conditions, e);
        if (!PyTuple_Check(conds)) {
            PyErr_SetString(PyExc_TypeError, "conditions: a tuple for each build");
            return NULL;
        }
        for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(conds); c++) {
            PyObject *keys, *getter, *operand;
            int kind;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(conds, c), "OOiO", &keys, &getter, &kind, &operand)) return NULL;
            if ((getter == Py_None && !PyTuple_Check(keys)) || kind < C_EXISTS || kind > C_NOT_IN ||
                (kind == C_EQUALS && !PyUnicode_CheckExact(operand)) ||
                ((kind == C_IN || kind == C_NOT_IN) && !PyAnySet_Check(operand))) {
                PyErr_SetString(PyExc_ValueError, "a condition: (keys, getter, kind, operand)");
                return NULL;
            }
        }
    }
    Runner *self = (Runner *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = runner_call;
    self->loads = Py_NewRef(loads);
    self->provenance_model = Py_NewRef(model);
    self->provenance_names = Py_NewRef(names);
    self->mapping_id = Py_NewRef(mapping_id);
    self->version = Py_NewRef(version);
    self->conditions = Py_NewRef(conditions);
    self->builds = Py_NewRef(builds);
    self->scans = 1;
    PyObject *reads = PyList_New(0); /* every build's steps' paths, one after another (paths_of_build) */
    if (reads == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    for (Py_ssize_t e = 0; e < n && self->scans; e++) {
        PyObject *conds = PyTuple_GET_ITEM(conditions, e);
        for (Py_ssize_t c = 0; c < PyTuple_GET_SIZE(conds) && self->scans; c++) {
            PyObject *keys = PyTuple_GET_ITEM(PyTuple_GET_ITEM(conds, c), 0);
            if (PyTuple_GET_ITEM(PyTuple_GET_ITEM(conds, c), 1) != Py_None || PyTuple_GET_SIZE(keys) == 0) {
                self->scans = 0; /* a getter's or the record's own value */
            } else if (path_add(&self->paths, &PyTuple_GET_ITEM(keys, 0), PyTuple_GET_SIZE(keys)) < 0) {
                goto failed;
            }
        }
        int read = self->scans ? paths_of_build(&self->paths, (Build *)PyTuple_GET_ITEM(builds, e), reads) : 0;
        if (read < 0) goto failed;
        self->scans = read;
    }
    if (self->scans) {
        path_number(&self->paths, &self->nslots);
        self->scans = self->nslots <= RUNNER_SLOTS;
    }
    if (self->scans && runner_slots(self, reads) < 0) goto failed;
    Py_DECREF(reads);
    return (PyObject *)self;
failed:
    Py_XDECREF(reads);
    Py_DECREF(self);
    return NULL;
}

static PyObject *runner_reads(Runner *self, void *unused) {
    if (!self->scans) Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (out == NULL || path_list(&self->paths, empty_tuple, out) < 0 || PyList_Sort(out) < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    Py_SETREF(out, PyList_AsTuple(out));
    return out;
}

static PyGetSetDef runner_getset[] = {
    {"reads", (getter)runner_reads, NULL,
     "The paths the record is decoded along (sorted), or None where orjson.loads decodes it whole.", NULL},
    {NULL},
};

static PyTypeObject RunnerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cgthub.mapping._vm.Runner",
    .tp_basicsize = sizeof(Runner),
    .tp_dealloc = (destructor)runner_dealloc,
    .tp_vectorcall_offset = offsetof(Runner, vectorcall),
    .tp_call = build_tp_call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Runner(loads, provenance_model, provenance_names, mapping_id, version, conditions, builds): "
              "run(payload, raw_id, checksum, received_at) -> the events, or None where map decides.",
    .tp_new = runner_new,
    .tp_getset = runner_getset,
};

static PyObject *vm_scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan(payload: bytes, paths: tuple of tuples of str)");
        return NULL;
    }
    PathNode root = {0};
    PyObject *out = NULL, *slots[RUNNER_SLOTS] = {0};
    int nslots = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[1]); i++) {
        PyObject *path = PyTuple_GET_ITEM(args[1], i);
        if (!PyTuple_Check(path) || PyTuple_GET_SIZE(path) == 0) {
            PyErr_SetString(PyExc_TypeError, "a path: a non-empty tuple of str");
            goto done;
        }
        if (path_add(&root, &PyTuple_GET_ITEM(path, 0), PyTuple_GET_SIZE(path)) < 0) goto done;
    }
    path_number(&root, &nslots);
    if (nslots > RUNNER_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "too many paths");
        goto done;
    }
    if (scan_record(&root, args[0], slots) < 0) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    if ((out = PyDict_New()) == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args[1]); i++) {
        PyObject *path = PyTuple_GET_ITEM(args[1], i), *found = slots[path_slot(&root, path)];
        if (PyDict_SetItem(out, path, found ? found : Py_None) < 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    clear_slots(slots, 0, nslots < RUNNER_SLOTS ? nslots : RUNNER_SLOTS);
    path_free(&root);
    return out;
}

static PyObject *vm_din(PyObject *module, PyObject *v) {
    PyObject *out = fast_din(v);
    return out ? out : Py_NewRef(Py_None);
}

static PyObject *vm_coi(PyObject *module, PyObject *v) {
    PyObject *out = fast_coi(v);
    return out ? out : Py_NewRef(Py_None);
}

static PyObject *vm_datetime(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "datetime(value, utcoffset)");
        return NULL;
    }
    PyObject *out = fast_datetime(args[0], args[1]);
    if (out == NULL && PyErr_Occurred()) return NULL;
    return out ? out : Py_NewRef(Py_None);
}

static PyObject *vm_pseudonym(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pseudonym(kind, value, key)");
        return NULL;
    }
    PyObject *out = fast_pseudonym(args[0], args[1], args[2]);
    if (out == NULL && PyErr_Occurred()) return NULL;
    return out ? out : Py_NewRef(Py_None);
}

static PyObject *vm_sha256_backend(PyObject *module, PyObject *unused) {
    return PyUnicode_FromString(compress == sha256_compress ? "portable" : "cpu");
}

static PyObject *vm_sha256(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer data;
    if (nargs != 2 || PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "sha256(data, portable)");
        return NULL;
    }
    int portable = PyObject_IsTrue(args[1]);
    void (*chosen)(uint32_t *, const unsigned char *) = compress;
    if (portable) compress = sha256_compress;
    Sha256 state;
    unsigned char digest[32];
    sha256_init(&state);
    sha256_update(&state, data.buf, (size_t)data.len);
    sha256_final(&state, digest);
    compress = chosen;
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)digest, 32);
}

static PyMethodDef vm_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))vm_scan, METH_FASTCALL,
     "What the runner's scanner reads in a JSON payload: {path: value} (None: unsure, orjson decodes)."},
    {"sha256", (PyCFunction)(void (*)(void))vm_sha256, METH_FASTCALL,
     "SHA-256 of bytes with the compression in use, or the portable one (for tests)."},
    {"sha256_backend", vm_sha256_backend, METH_NOARGS, "Which SHA-256 compression serves: 'cpu' or 'portable'."},
    {"pseudonym", (PyCFunction)(void (*)(void))vm_pseudonym, METH_FASTCALL,
     "The pseudonym step's own answer for (kind, value, key) (None: it leaves it to cgthub.pseudonym)."},
    {"din", vm_din, METH_O, "The DIN step's own answer (None: it leaves the value to the Python transform)."},
    {"coi", vm_coi, METH_O, "The CoI step's own answer (None: it leaves the value to the Python transform)."},
    {"datetime", (PyCFunction)(void (*)(void))vm_datetime, METH_FASTCALL,
     "The datetime step's own answer for (value, zone.utcoffset) (None: it leaves it to the Python transform)."},
    {NULL},
};

static struct PyModuleDef vm_module = {PyModuleDef_HEAD_INIT, "_vm", "The mapping fast path's plan interpreter.", -1,
                                       vm_methods};

PyMODINIT_FUNC PyInit__vm(void) {
    PyDateTime_IMPORT;
    choose_compress();
    scan_init();
    if (PyDateTimeAPI == NULL) return NULL;
    str_strip = PyUnicode_InternFromString("strip");
    str_pseudonym_key = PyUnicode_InternFromString("pseudonym_key");
    empty_str = PyUnicode_FromString("");
    empty_tuple = PyTuple_New(0);
    if (str_strip == NULL || empty_str == NULL || empty_tuple == NULL) return NULL;
    if (PyType_Ready(&BuildType) < 0) return NULL;
    PyObject *module = PyModule_Create(&vm_module);
    if (module == NULL) return NULL;
    if (PyType_Ready(&RunnerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Build", (PyObject *)&BuildType) < 0 ||
        PyModule_AddObjectRef(module, "Runner", (PyObject *)&RunnerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#define CONST(name) PyModule_AddIntConstant(module, #name, name)
    if (CONST(OP_HOLD) || CONST(OP_READ) || CONST(OP_CALLREAD) || CONST(OP_CONST) || CONST(OP_EMPTY) ||
        CONST(OP_T_CALL) || CONST(OP_T_PREFIX) || CONST(OP_T_SUFFIX) || CONST(OP_T_STR) || CONST(OP_T_METHOD) ||
        CONST(OP_T_INT) || CONST(OP_T_FLOAT) || CONST(OP_T_PSEUDO) || CONST(OP_T_DATETIME) || CONST(OP_T_DIN) ||
        CONST(OP_T_COI) || CONST(OP_MAP) || CONST(OP_PATTERN) || CONST(OP_ALLOWED) || CONST(OP_TOKENIZE) ||
        CONST(OP_CHK_STR) || CONST(OP_CHK_EXACT) || CONST(OP_CHK_FLOAT) || CONST(OP_CHK_AWARE) ||
        CONST(OP_CHK_CALL) || CONST(OP_CHK_TABLE) || CONST(OP_DICT) || CONST(OP_MODEL) || CONST(OP_RETURN) || CONST(V_REG) ||
        CONST(V_CONST) || CONST(V_FACTORY) || CONST(V_DEFAULT_ONLY) || CONST(C_EXISTS) || CONST(C_EQUALS) ||
        CONST(C_IN) || CONST(C_NOT_IN)) {
        Py_DECREF(module);
        return NULL;
    }
#undef CONST
    return module;
}
